"""``python -m zoo list [PATTERN]`` and ``python -m zoo summary NAME [--size H W]``."""
import argparse
import sys

from . import list_models
from .summary import summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list registered models")
    ls.add_argument("pattern", nargs="?", default="*")
    sm = sub.add_parser("summary", help="per-layer table: shapes, params, activations, MACs, RF")
    sm.add_argument("model")
    sm.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: native)")
    sm.add_argument("--num-classes", type=int)
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(list_models(args.pattern)))
        return 0
    try:
        from .registry import create
        model = create(args.model, num_classes=args.num_classes)
        shape = None if args.size is None else (1, *args.size, model.input_shape[-1])
        print(summary(model, shape).table())
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
