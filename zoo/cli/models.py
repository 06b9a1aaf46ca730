"""``zoo list [PATTERN]`` and ``zoo summary NAME [--size H W]``: the registry and the notes'
per-layer table (:func:`zoo.summary`)."""
from __future__ import annotations

from .. import registry
from ..summary import summary
from .args import at_least, warn


def add_arguments(p, name: str) -> None:
    if name == "list":
        p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern (default *)")
        p.add_argument("--pretrained", action="store_true", help="only models with weights")
        p.add_argument("--weights", action="store_true", help="list weight tags instead")
        return
    p.add_argument("model")
    p.add_argument("--size", type=at_least(1), nargs=2, metavar=("H", "W"),
                   help="input size (default: native)")
    p.add_argument("--num-classes", type=at_least(1))


def run(args) -> int:
    if args.command == "list":
        if args.weights and args.pretrained:
            warn("--pretrained is ignored with --weights (every weight tag is pretrained)")
        names = (registry.list_weights(args.pattern) if args.weights
                 else registry.list_models(args.pattern, pretrained=args.pretrained))
        if not names:
            warn(f"no {'weight tag' if args.weights else 'model'} matches {args.pattern!r}"
                 + (" with weights" if args.pretrained and not args.weights else ""))
        print("\n".join(names))
        return 0
    model = registry.create(args.model, num_classes=args.num_classes)
    shape = None if args.size is None else (*args.size, model.input_shape[-1])
    print(summary(model, shape).table())
    return 0
