"""Flag types of the command line: values the library would reject late (a zero count, a
NaN, an output path under a file) are rejected while the arguments are parsed, with the
flag named, before anything loads or compiles."""
from __future__ import annotations

import argparse
import math
import os
import sys

__all__ = ["POLICY_HELP", "add_policy", "at_least", "output_file", "positive_floats", "warn"]

#: what each ``--policy`` name means (zoo.tuning.named_policy)
POLICY_HELP = ("tuned (the default rules plus what `zoo tune` measured on this machine), "
               "default (the hand-tuned rules) or xla (every conv XLA's own); default tuned")


def add_policy(group, *, default=None, several: bool = False) -> None:
    """The ``--policy`` flag: how the convolutions run (``several``: the first for the main
    runner, the others beside it)."""
    from ..tuning import POLICIES
    lead = ("conv policies: the main JAX runner's, then runners beside it named policy_NAME; "
            "each " if several else "how the convolutions run: ")
    group.add_argument("--policy", choices=POLICIES, default=default,
                       nargs="+" if several else None, help=lead + POLICY_HELP)


def at_least(low: int):
    """An ``int`` type accepting values ``>= low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def positive_floats(text: str) -> tuple:
    """Comma-separated finite numbers > 0 (e.g. ``1.0,1.25``)."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got "
                                             f"{part.strip()!r} in {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"every value must be a finite number > 0, got "
                                             f"{part.strip()!r}")
        values.append(value)
    return tuple(values)


def output_file(text: str) -> str:
    """A file path that can be written: not a directory, and under a directory that exists
    (or can be created) and is writable."""
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file path")
    probe = os.path.dirname(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {probe} is a file, not a "
                                         f"directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {probe} is not writable")
    return text


def warn(message: str) -> None:
    """One line on stderr for a flag that is harmlessly ignored."""
    print(f"warning: {message}", file=sys.stderr)
