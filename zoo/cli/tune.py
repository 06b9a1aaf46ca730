"""``zoo tune MODEL``: measure how each convolution of the model runs fastest on this
machine (:func:`zoo.tune`) and cache the verdicts; ``zoo train``, ``zoo evaluate`` and
``zoo benchmark`` use them under ``--policy tuned`` (their default).

    zoo tune resnet50 --batch-size 8                      # inference at the model's size
    zoo tune resnet18 --train --batch-size 32 --image-size 32 --num-classes 10
    zoo tune vgg16 --dtype bfloat16 --batch-size 8
    zoo tune --targets                                    # every target zoo benchmark times
    zoo tune --targets resnet50:infer:224:8 lenet5:train:32:128:opt=adam
    zoo tune --show                                       # what is cached for this machine

Exit codes: 0 done, 2 bad arguments."""
from __future__ import annotations

from .. import registry
from .args import at_least


def add_arguments(p, name: str) -> None:
    p.add_argument("model", metavar="MODEL", nargs="?", help="model name (zoo list)")
    p.add_argument("--targets", nargs="*", metavar="TARGET",
                   help="instead of MODEL: benchmark targets, MODEL:MODE:SIZE:BATCH[:classes=N]"
                        "[:opt=adam] as zoo benchmark takes them, each in its mode and shape "
                        "(none given: the benchmark's tracked list)")
    p.add_argument("--train", action="store_true",
                   help="measure the train step's forward and gradients (default: inference)")
    p.add_argument("--batch-size", type=at_least(1), help="default 8")
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
        if args.model or args.targets is not None:
            raise ValueError("--show lists the whole cache: give no MODEL or --targets with it")
        return _show()
    if not 0 <= args.margin < 1:
        raise ValueError(f"--margin must be in [0, 1), got {args.margin}")
    how = dict(rounds=args.rounds, margin=args.margin, verify=not args.no_verify,
               refresh=args.refresh)
    if args.targets is not None:
        shaping = [flag for flag, given in (("MODEL", args.model), ("--train", args.train),
                                            ("--batch-size", args.batch_size is not None),
                                            ("--image-size", args.image_size is not None),
                                            ("--num-classes", args.num_classes is not None))
                   if given]
        if shaping:
            raise ValueError(f"--targets name their own model, mode, size and batch: give "
                             f"{', '.join(shaping)} or --targets, not both")
        from ..bench import tune_targets
        tuned = tune_targets(args.targets or None, dtype=args.dtype, **how)
        print()
        for target, (measured, total) in tuned.items():
            print(f"{target}: {measured} of {total} conv geometries measured on this machine")
        print("--policy tuned (the default of zoo train, evaluate and benchmark) uses them")
        return 0
    if not args.model:
        raise ValueError("give a MODEL to tune (zoo list), --targets, or --show")
    import jax.numpy as jnp

    from ..tuning import tune
    extra = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = registry.create(args.model, **extra)
    h, w, c = model.input_shape
    if args.image_size is not None:
        h = w = args.image_size
    policy = tune(model, (args.batch_size or 8, h, w, c), train=args.train,
                  dtype=jnp.dtype(args.dtype), **how)
    print(f"{model.name}: {len(policy.tuned)} measured conv choices cached for this machine; "
          f"--policy tuned (the default of zoo train, evaluate and benchmark) uses them")
    return 0
