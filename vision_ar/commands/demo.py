"""`vision-ar demo`: the editing web page (Gradio) on this machine.

    vision-ar demo                          # http://127.0.0.1:7860 with the shipped models
    vision-ar demo --port 8000 --models fmnist-var

Needs the `demo` extra (pip install "vision-ar[demo]"). It listens on 127.0.0.1 unless --host says otherwise.
"""
from __future__ import annotations

import argparse


def add_parser(sub):
    p = sub.add_parser("demo", help="web page for in-painting, editing and out-painting", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--models", nargs="+", default=None, help="shipped models to offer (default: all with editing)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import launch

    print(f"vision-ar demo on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    launch(args.host, args.port, args.models, block=True)
    return 0
