"""The functional core: every layer is a ``Layer(init, apply)`` pair over named pytrees.

    init(key, in_shape)                                            -> (out_shape, params, state)
    apply(params, state, x, *, train=False, rng=None, policy=None) -> (y, new_state)

Activations are NHWC, conv kernels HWIO, dense kernels (in, out). Parameters and state are
nested dicts keyed by the names given to the combinators; stateless layers have empty
dicts, which the combinators omit. Geometry follows the cs231n notes: a conv or pool
produces ``(W - F + 2P)/S + 1`` outputs along each spatial axis; when that is not an
integer the layer raises, unless it declares ``rounding="floor"`` or ``"ceil"`` (the rule of
the published model). ``policy`` (a :class:`zoo.ConvPolicy`) is how the convs run.

- :mod:`.layer`: the contract, names, keys, the recorder; :mod:`.init`: initial values;
- :mod:`.layers`: conv, dense, pools, BatchNorm, LRN, dropout, activations;
- :mod:`.combinators`: Sequential (optionally scanned), Concat, Residual, Chain, WithSideHeads;
- :mod:`.tree`: walking and rewriting a net by its layer names.

Imports :mod:`zoo.kernels` only.
"""
from .combinators import Chain, Concat, NamedLayers, Residual, Sequential, WithSideHeads
from .init import filled, he_normal, scaled_normal
from .layer import (Layer, Recorder, captured, capturing, count_params, current_path, name_key,
                    output_size, record, recorder, recording, scope, scopes, side_branch,
                    volume)
from .layers import (ACTIVATIONS, LRN, Activation, AdaptiveAvgPool, AvgPool, BatchNorm, Conv,
                     Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, Relu, scaled_tanh)
from .tree import (is_sequence, layer_names, leaf_layers, main_path, rebuild, side_heads, split,
                   truncate)

__all__ = ["ACTIVATIONS", "Activation", "AdaptiveAvgPool", "AvgPool", "BatchNorm", "Chain",
           "Concat", "Conv", "Dense", "Dropout", "Flatten", "GlobalAvgPool", "LRN", "Layer",
           "MaxPool", "NamedLayers", "Recorder", "Relu", "Residual", "Sequential",
           "WithSideHeads", "captured", "capturing", "count_params", "current_path", "filled", "he_normal",
           "is_sequence", "layer_names", "leaf_layers", "main_path", "name_key",
           "output_size", "rebuild", "record", "recorder", "recording", "scaled_normal",
           "scaled_tanh", "scope", "scopes", "side_branch", "side_heads", "split", "truncate", "volume"]
