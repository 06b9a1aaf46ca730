"""Kernels: how convolutions, pools and BatchNorm run, and how programs are compiled.

Imports nothing else of the zoo but :mod:`zoo.machine`. The layers of :mod:`zoo.nn` call :func:`conv2d` with the
model's :class:`ConvPolicy`; nothing here reads module state.
"""
from . import native
from .conv import CUSTOM_CONVS, DEFAULT_POLICY, Epilogue, choose, conv2d
from .forms import im2col
from .geometry import (ROUNDING_RULES, output_size, padding_pairs, pair, pool_geometry,
                       spatial_out)
from .policy import IMPLS, ConvGeometry, ConvPolicy
from .pool_bn import batch_norm_train, max_pool, stored
from .xla import CPU_COMPILER_OPTIONS, compiler_options, jit

__all__ = ["CPU_COMPILER_OPTIONS", "CUSTOM_CONVS", "DEFAULT_POLICY", "ConvGeometry", "Epilogue",
           "ConvPolicy", "IMPLS", "ROUNDING_RULES", "batch_norm_train", "choose",
           "compiler_options", "conv2d", "im2col", "jit", "max_pool", "native", "output_size",
           "pair", "padding_pairs", "pool_geometry", "spatial_out", "stored"]
