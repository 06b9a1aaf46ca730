"""``zoo.pretrained`` is :mod:`zoo.weights` under the name of the first releases."""
from . import weights as _weights
from .weights import *  # noqa: F401,F403
from .weights import __all__  # noqa: F401


def __getattr__(name):
    return getattr(_weights, name)
