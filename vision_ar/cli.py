"""The `vision-ar` command. Each subcommand lives in `vision_ar/commands/<name>.py` and exposes
`add_parser(subparsers)`, which registers its arguments and sets `func` (called with the parsed args)."""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import VisionARError

# Order shown in --help: one module vision_ar/commands/<name>.py each.
COMMANDS = ("sample", "reconstruct", "train", "eval", "fid", "edit", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vision-ar", description="Autoregressive image generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"vision_ar.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except VisionARError as e:  # a registered family's declaration that cannot work (e.g. a clashing flag)
        print(f"vision-ar: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VisionARError as e:  # errors meant for people: one message, no traceback
        print(f"vision-ar {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
