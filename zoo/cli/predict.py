"""``zoo predict --weights TAG IMAGE...``: the top classes of images under pretrained
weights, each through the weights' own transforms (:func:`zoo.weights.classify`).

    zoo predict --weights lenet5.digits digit.png
    zoo predict --model resnet50 --weights resnet50.tv2_in1k cat.jpg
    zoo predict --model resnet18 --weights ~/Downloads/resnet18-f37072fd.pth cat.jpg

Exit codes: 0 done, 2 bad arguments, weights or images."""
from __future__ import annotations

from .. import weights
from .args import at_least


def add_arguments(p, name: str) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--weights", required=True, metavar="TAG_OR_PATH",
                   help="a weight tag (e.g. lenet5.digits, resnet50.tv_in1k; see zoo list "
                        "--weights), a torchvision .pth/.safetensors state dict, or a zoo "
                        "weights file")
    p.add_argument("--model", help="model name; needed for a torchvision file whose name does "
                                   "not say (the tag or zoo file says it otherwise)")
    p.add_argument("--top", type=at_least(1), default=5, help="how many classes to print (default 5)")


def run(args) -> int:
    model, rows = weights.classify(args.images, args.weights, args.model, top=args.top)
    for path, top in zip(args.images, rows):
        print(f"{path}: {model.name} with {args.weights}")
        for rank, (i, name, p) in enumerate(top, 1):
            print(f"  {rank}. {name:<30} {p:7.2%}  (class {i})")
    return 0
