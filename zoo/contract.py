"""What :meth:`zoo.Model.apply` checks at its boundary, before anything is computed.

- the input: an array of floating images (N, H, W, C), N >= 1, with the model's channels;
  integer and bool images are refused with the conversion to write (explicit is safer than
  a guessed scale), complex ones too;
- ``params`` and ``state``: the tree of the model's abstract init at this input size, path
  for path and shape for shape, floating arrays; a mismatch lists the missing, unexpected
  and mis-shaped paths as :func:`zoo.paths.load_into` does, with a hint when the cause is
  plain (swapped arguments, no state, another class count, another input size);
- ``rng``: one PRNG key, typed (``jax.random.key(0)``) or legacy (``jax.random.PRNGKey(0)``).

Every check reads shapes and dtypes only, so under ``jit`` it runs once, at trace time.
Imports :mod:`zoo.paths` only.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import paths

__all__ = ["MAX_CLASSES", "Expected", "check_config", "check_input", "check_num_classes",
           "check_rng", "check_variables", "describe", "is_array"]

#: the most outputs a classifier may have (ImageNet-21k has 21,841; this is 46x that): a
#: larger count is a typo, refused before anything is built or allocated
MAX_CLASSES = 1_000_000

#: leaf dtypes params, state and inputs may have (the zoo computes in these)
FLOATS = frozenset(np.dtype(d) for d in (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64))
_ARRAYS = (np.ndarray, jax.Array)   # jax.Array covers tracers under jit, grad and eval_shape
_LIMIT = 12                         # paths listed per kind of mismatch


def is_array(value) -> bool:
    return isinstance(value, _ARRAYS)


def describe(value) -> str:
    """``value`` as an error message names it: ``None``, ``int 0``, ``int32 array (2,)``."""
    if value is None:
        return "None"
    if is_array(value):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


# ----------------------------------------------------------------------------------------
# The input.

def check_input(x, *, name: str, channels: int, mean, std, example) -> None:
    """``x`` must be a floating array (N, H, W, ``channels``) with N >= 1."""
    if not is_array(x):
        raise TypeError(f"{name}: x must be an array of images (N, H, W, C), got {describe(x)}; "
                        f"use jnp.asarray(images, jnp.float32), e.g. of shape {example}")
    dtype = np.dtype(x.dtype)
    if dtype not in FLOATS:
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(f"{name}: x is {dtype}; the model takes real floating images "
                            f"(float32, bfloat16, float16 or float64)")
        if jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_:
            raise TypeError(
                f"{name}: x is {dtype}; the model takes floating images normalised per channel, "
                f"never raw pixels: x = x.astype(jnp.float32) / 255, then "
                f"x = (x - mean) / std with this model's mean={tuple(mean)} and "
                f"std={tuple(std)} (model.mean, model.std)")
        raise TypeError(f"{name}: x is {dtype}; the model takes floating images "
                        f"(float32, bfloat16, float16 or float64)")
    shape = tuple(x.shape)
    if len(shape) != 4 or shape[-1] != channels:
        raise ValueError(f"{name} expects NHWC input with {channels} channel(s), e.g. {example}; "
                         f"got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (x has shape {shape}); pass at least one "
                         f"image")


# ----------------------------------------------------------------------------------------
# The rng.

@functools.cache
def _raw_key_shape() -> tuple:
    return tuple(jax.random.key_data(jax.random.key(0)).shape)


def check_rng(rng, *, name: str, train: bool, dropout: Callable[[], Sequence[str]]) -> None:
    """``rng`` is None or one key; ``train=True`` with dropout layers (``dropout()``: their
    paths) needs one."""
    fix = "e.g. rng=jax.random.key(0), a new key per step (jax.random.fold_in(key, step))"
    if rng is None:
        layers = dropout() if train else ()
        if layers:
            raise ValueError(f"{name}: train=True needs an explicit rng for its dropout layers "
                             f"({', '.join(layers)}); {fix}")
        return
    if not is_array(rng):
        raise TypeError(f"{name}: rng must be a PRNG key, got {describe(rng)}; {fix}")
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if rng.shape != ():
            raise ValueError(f"{name}: rng must be one PRNG key, got an array of keys of shape "
                             f"{tuple(rng.shape)}; pick one (rng[0]) or {fix}")
        return
    raw = _raw_key_shape()
    if np.dtype(rng.dtype) == np.uint32 and tuple(rng.shape) == raw:
        return  # a legacy key, jax.random.PRNGKey(0)
    kind = ValueError if np.dtype(rng.dtype) == np.uint32 else TypeError
    raise kind(f"{name}: rng must be a PRNG key (a typed key, or a legacy uint32{list(raw)} "
               f"from jax.random.PRNGKey), got {describe(rng)}; {fix}")


# ----------------------------------------------------------------------------------------
# Params and state.

@dataclasses.dataclass(frozen=True)
class Expected:
    """The model's abstract variables at one input size, flattened once for the fast path."""

    abstract: Any                 # {"params", "state"} of ShapeDtypeStructs
    where: str                    # the input's size, "32x32x1"
    params: tuple                 # (treedef, leaf shapes)
    state: tuple

    @classmethod
    def of(cls, abstract, where: str) -> "Expected":
        def flat(tree):
            leaves, treedef = jax.tree_util.tree_flatten(tree)
            return treedef, tuple(tuple(a.shape) for a in leaves)
        return cls(abstract, where, flat(abstract["params"]), flat(abstract["state"]))


def _fits(tree, expected) -> bool:
    """Same treedef, same shapes, floating arrays: the cheap test every call passes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if treedef != expected[0]:
        return False
    for leaf, shape in zip(leaves, expected[1]):
        if not isinstance(leaf, _ARRAYS) or leaf.shape != shape or leaf.dtype not in FLOATS:
            return False
    return True


def check_variables(params, state, expected: Expected, *, name: str,
                    classifier: Sequence[str] = (), native: Callable | None = None):
    """The ``state`` to run with (``{}`` for ``None`` when the model keeps none), or a
    ``ValueError`` listing what differs from ``expected``. ``native()``: the abstract
    variables at the model's own input size, asked for a hint when shapes differ."""
    if state is None and not expected.state[1]:
        state = {}
    if _fits(params, expected.params) and _fits(state, expected.state):
        return state
    given = paths.flatten({"params": params, "state": state})
    found = paths.mismatches(expected.abstract, given, source="given")
    found["non-array"] = [f"{p}: {describe(v)}" for p, v in given.items() if not is_array(v)]
    found["dtype"] = [f"{p}: {v.dtype}, expected a floating dtype (float32, bfloat16, ...)"
                      for p, v in given.items() if is_array(v) and np.dtype(v.dtype) not in FLOATS]
    found = {kind: lines for kind, lines in found.items()
             if lines or kind in ("missing", "unexpected", "mis-shaped")}
    if not any(found.values()):
        return state   # the same paths and shapes in other containers
    hints = _hints(params, state, expected, given, found, classifier, native)
    raise ValueError("\n".join([paths.mismatch_message(
        f"{name}: the params and state given for input {expected.where} do not match the model",
        found, limit=_LIMIT), *hints,
        "They must be this model's variables (model.init, a checkpoint or zoo.weights.load of "
        "the same model and class count)."]))


def _shapes(tree) -> dict:
    return {p: tuple(np.shape(v)) if not hasattr(v, "shape") else tuple(v.shape)
            for p, v in paths.flatten(tree).items()}


def _hints(params, state, expected, given, found, classifier, native) -> list[str]:
    want = expected.abstract
    if state is None:
        return [f"state is None, but the model keeps BatchNorm running statistics "
                f"({len(expected.state[1])} arrays): pass variables['state']"]
    if _shapes(params) == _shapes(want["state"]) and _shapes(state) == _shapes(want["params"]):
        return ["params and state look swapped: the order is apply(params, state, x)"]
    if expected.state[1] and not paths.flatten(state):
        return [f"state is empty, but the model keeps BatchNorm running statistics "
                f"({len(expected.state[1])} arrays): pass variables['state']"]
    if found["missing"] or found["unexpected"] or not found["mis-shaped"]:
        return []
    bad = [line.split(":")[0] for line in found["mis-shaped"]]
    heads = [f"params/{c}/" for c in classifier]
    if heads and all(any(b.startswith(h) for h in heads) for b in bad):
        mine = _shapes(want).get(f"{heads[0]}kernel")
        theirs = _shapes(given).get(f"{heads[0]}kernel")
        if mine and theirs and mine[:-1] == theirs[:-1] and mine[-1] != theirs[-1]:
            return [f"the params are for {theirs[-1]} classes, the model has {mine[-1]}: "
                    f"create the model with num_classes={theirs[-1]}"]
    if native is not None:
        try:
            home, size = native()
        except ValueError:
            return []
        if _shapes(home) == _shapes(given):
            return [f"the params are for {size} inputs (the model's input_shape), this input is "
                    f"{expected.where}: resize the input, or init the model at this size"]
    return []


def check_num_classes(name: str, value, *, headless: bool = False) -> int:
    """``value`` as a class count: an int (not a bool) from 1 to :data:`MAX_CLASSES`, or 0
    where ``headless`` (a model without its classifier)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: num_classes must be an int, got {type(value).__name__} "
                        f"{value!r}")
    if value < (0 if headless else 1):
        raise ValueError(f"{name}: num_classes must be >= 1 (or 0: no classifier, the "
                         f"features), got {value}" if headless else
                         f"{name}: num_classes must be >= 1, got {value}")
    if value > MAX_CLASSES:
        raise ValueError(f"{name}: num_classes={value} is more than MAX_CLASSES={MAX_CLASSES:,} "
                         f"(ImageNet-21k has 21,841 classes): a typo? Nothing was allocated")
    return int(value)


def check_config(name: str, config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """Builder arguments of the types of their defaults (a bool for a bool, an int for an
    int) and a sane class count, checked before anything is built or allocated."""
    config = dict(config)
    for key, default in defaults.items():
        value = config.get(key)
        if key == "num_classes":
            config[key] = check_num_classes(name, value)
        elif isinstance(default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name}: {key} must be True or False, got {value!r}")
            config[key] = bool(value)
        elif isinstance(default, int) and (isinstance(value, (bool, np.bool_))
                                           or not isinstance(value, numbers.Integral)):
            raise TypeError(f"{name}: {key} must be an int, got {value!r}")
    return config
