"""One module per family; importing one registers its variants with the registry
(:func:`zoo.registry.register`): builder, metadata, weights and torchvision key rules."""
from . import alexnet, googlenet, lenet, resnet, vgg, zfnet

__all__ = ["alexnet", "googlenet", "lenet", "resnet", "vgg", "zfnet"]
