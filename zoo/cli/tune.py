"""``zoo tune MODEL``: measure how each convolution of the model runs fastest on this
machine (:func:`zoo.tune`) and cache the verdicts; ``zoo train``, ``zoo evaluate`` and
``zoo benchmark`` use them under ``--policy tuned`` (their default).

    zoo tune resnet50 --batch-size 8                      # inference at the model's size
    zoo tune resnet18 --train --batch-size 32 --image-size 32 --num-classes 10
    zoo tune vgg16 --dtype bfloat16 --batch-size 8
    zoo tune --show                                       # what is cached for this machine

Exit codes: 0 done, 2 bad arguments."""
from __future__ import annotations

from .. import registry
from .args import at_least


def add_arguments(p, name: str) -> None:
    p.add_argument("model", metavar="MODEL", nargs="?", help="model name (zoo list)")
    p.add_argument("--train", action="store_true",
                   help="measure the train step's forward and gradients (default: inference)")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="default 8")
    p.add_argument("--image-size", type=at_least(1),
                   help="square input side (default: the model's own input size)")
    p.add_argument("--num-classes", type=at_least(1), help="default: the model's")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--rounds", type=at_least(1), default=5,
                   help="interleaved rounds per measurement (default 5)")
    p.add_argument("--margin", type=float, default=0.03,
                   help="another implementation replaces the default rules' choice only when "
                        "faster by more than this fraction (default 0.03)")
    p.add_argument("--refresh", action="store_true",
                   help="measure again the geometries already cached for this machine")
    p.add_argument("--no-verify", action="store_true",
                   help="keep what won alone without timing the whole model")
    p.add_argument("--show", action="store_true",
                   help="list what is cached for this machine and exit")


def _show() -> int:
    from ..tuning import cache
    entries = cache.load()
    print(f"{cache.path()}: {len(entries)} conv geometries measured on this machine")
    for key, e in entries.items():
        alone = e["seconds"]
        times = ", ".join(f"{i} {s * 1e3:.2f}"
                          for i, s in sorted(alone.items(), key=lambda x: x[1]))
        print(f"  {key}: {e['impl']} (default {e['default']}; ms alone: {times})")
    return 0


def run(args) -> int:
    if args.show:
        if args.model:
            raise ValueError("--show lists the whole cache: give no MODEL with it")
        return _show()
    if not args.model:
        raise ValueError("give a MODEL to tune (zoo list), or --show")
    if not 0 <= args.margin < 1:
        raise ValueError(f"--margin must be in [0, 1), got {args.margin}")
    import jax.numpy as jnp

    from ..tuning import tune
    extra = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = registry.create(args.model, **extra)
    h, w, c = model.input_shape
    if args.image_size is not None:
        h = w = args.image_size
    policy = tune(model, (args.batch_size, h, w, c), train=args.train,
                  dtype=jnp.dtype(args.dtype), rounds=args.rounds, margin=args.margin,
                  verify=not args.no_verify, refresh=args.refresh)
    print(f"{model.name}: {len(policy.tuned)} measured conv choices cached for this machine; "
          f"--policy tuned (the default of zoo train, evaluate and benchmark) uses them")
    return 0
