"""One module per family; importing one registers its variants."""
from . import alexnet, googlenet, lenet, resnet, vgg, zfnet  # noqa: F401
