"""The one command line: ``zoo COMMAND`` (also ``python -m zoo COMMAND``).

Each command is a module with ``add_arguments(parser)`` and ``run(args) -> int``; the work is
the library's. Errors meant for the user print one line and exit 2 (1 when training
diverged, 130 on Ctrl-C, 143 on SIGTERM, which unwinds as Ctrl-C does); nothing else
reaches the terminal as a traceback. An unexpected exception (a bug) prints
``error: internal error: TYPE: message`` and exits 3; with ``ZOO_DEBUG=1`` every error
propagates with its traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from . import benchmark, docs, evaluate, export, models, predict, train, tune, visualize

__all__ = ["COMMANDS", "Terminated", "build_parser", "main", "script"]

#: command -> (module, one-line help)
COMMANDS = {
    "train": (train, "train a model (default: lenet5 on the digits that ship with scikit-learn)"),
    "evaluate": (evaluate, "evaluate a training run's best checkpoint, or weights on a dataset"),
    "predict": (predict, "top classes of images under pretrained weights"),
    "export": (export, "export a model with its weights: StableHLO, TF SavedModel or ONNX"),
    "visualize": (visualize, "filters, activations and fully-convolutional score maps"),
    "benchmark": (benchmark, "speed against torch, interleaved, with the matmul peak"),
    "tune": (tune, "measure the fastest implementation of each convolution on this machine"),
    "summary": (models, "per-layer shapes, params, activations, MACs, receptive field"),
    "list": (models, "registered models (and their weights)"),
    "docs": (docs, "regenerate docs/models.md and the pictures of docs/fully_conv.md"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="The classic convolutional "
                                     "networks as pure JAX functions.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        module.add_arguments(p, name)
        p.set_defaults(handler=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``): unwinds as Ctrl-C does, so that data workers
    are stopped and the last checkpoint is kept; the exit code is 143."""


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises :class:`Terminated` in the main thread while a command runs (the
    previous handler is restored after); elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    """Run ``zoo`` with ``argv`` (default: the process's); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse printed the usage and its error (2), or --help (0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    from ..train import NonFiniteLossError

    debug = os.environ.get("ZOO_DEBUG", "") not in ("", "0")
    try:
        with _terminate_as_interrupt():
            return args.handler(args)
    except Terminated:
        return 143
    except NonFiniteLossError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, NotADirectoryError, ImportError, OSError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug, not bad input: one line, the traceback on request
        if debug:
            raise
        print(f"error: internal error: {type(e).__name__}: {e} (run again with ZOO_DEBUG=1 "
              f"for the traceback, and please report it)", file=sys.stderr)
        return 3


def script(command: str) -> None:
    """``scripts/<command>.py``: ``zoo <command>`` with the script's arguments."""
    sys.exit(main([command, *sys.argv[1:]]))
