"""The command-line side of the families' flags: `vision-ar sample` and `vision-ar eval` add every registered
family's flags (`Family.cli_flags`, collected by `vision_ar.family.cli_flags`) and pass the ones the user set
on: load flags to `load_pipeline`, call flags to the pipeline of their own family."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..family import cli_flags, family_of_pipeline


def add_cli_flags(parser) -> None:
    """Add every registered family's flags to an argparse parser (`vision-ar sample`, `vision-ar eval`)."""
    for name, (flag, fams) in cli_flags().items():
        kw = flag.argparse_kwargs()
        kw["help"] = f"{kw['help']} [{', '.join(f.name for f in fams)}]"
        try:
            parser.add_argument(name, **kw)
        except argparse.ArgumentError as e:
            raise ConfigError(f"family {fams[0].name}: its flag {name} clashes with an option of `{parser.prog}` "
                              f"({e}); give the flag another name") from None


def load_kwargs(args) -> dict:
    """The load flags the user set: keyword arguments for `load_pipeline`."""
    return {flag.kwarg: getattr(args, flag.dest) for flag, _ in cli_flags().values()
            if flag.to == "load" and getattr(args, flag.dest, None) is not None}


def check_sampler_flags(args) -> None:
    """Flags of one sampler (SJD's window...) given with another --sampler are refused, not silently ignored."""
    from ..validation import require_sampler

    by_sampler: dict[str, dict] = {}
    for flag, _ in cli_flags().values():
        if flag.sampler is not None:
            by_sampler.setdefault(flag.sampler, {})[flag.dest] = getattr(args, flag.dest, None)
    for sampler, options in by_sampler.items():
        require_sampler(args.sampler, sampler, **options)


def call_kwargs(args, pipe) -> dict:
    """The call flags the user set, for this pipeline's family; a flag of another family is an error."""
    return call_kwargs_for(args, family_of_pipeline(pipe))


def call_kwargs_for(args, fam) -> dict:
    """The call flags the user set, for family `fam` (None: any family); a flag of another family is an error."""
    # "set" = not None and not an unset store_true (False); `0 in (None, False)` would drop a typed 0 (0 == False)
    chosen = [(flag, fams) for flag, fams in cli_flags().values()
              if flag.to == "call" and getattr(args, flag.dest, None) is not None
              and getattr(args, flag.dest) is not False]
    if not chosen:
        return {}
    out = {}
    for flag, fams in chosen:
        if fam is not None and fam not in fams:
            raise ConfigError(f"{flag.name} applies to {' / '.join(f.name for f in fams)} models; this model is a "
                              f"{fam.name} model: drop {flag.name}")
        out[flag.kwarg] = getattr(args, flag.dest)
    return out
