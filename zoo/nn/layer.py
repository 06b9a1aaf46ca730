"""The layer contract, names and keys, and the trace-time recorder.

Every layer and every block is a :class:`Layer`:

    init(key, in_shape)                                            -> (out_shape, params, state)
    apply(params, state, x, *, train=False, rng=None, policy=None) -> (y, new_state)

``params`` and ``state`` are nested dicts keyed by the names the combinators give; stateless
layers return ``{}``, which the combinators omit. ``policy`` is the model's
:class:`zoo.kernels.ConvPolicy` (how convs run), passed down by every combinator.

Three things are trace-time context, never configuration: the naming scope (the path of the
layer being traced, for keys and error messages), the recorder (rows for the summary, the
conv choices of a trace) and the capture box (the outputs ``Model.apply(capture=...)``
asked for).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import zlib
from typing import Callable, Mapping

import jax
import numpy as np

from .. import kernels


@dataclasses.dataclass(frozen=True)
class Layer:
    """A pure layer. ``kind``/``config``/``children`` describe it for tools that rewrite
    nets; ``apply_with_aux`` is set by layers with side outputs (:func:`WithSideHeads`):
    ``(y, {head: output}, new_state)``."""

    init: Callable
    apply: Callable
    kind: str = "layer"
    config: Mapping = dataclasses.field(default_factory=dict)
    children: tuple = ()
    apply_with_aux: Callable | None = None


_SCOPE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("zoo_scope", default=())
_RECORDER: contextvars.ContextVar = contextvars.ContextVar("zoo_recorder", default=None)
_CAPTURE: contextvars.ContextVar = contextvars.ContextVar("zoo_capture", default=None)


@contextlib.contextmanager
def scope(name: str):
    """Trace the layer ``name`` (one more level of the current path)."""
    token = _SCOPE.set(_SCOPE.get() + (name,))
    try:
        yield
    finally:
        _SCOPE.reset(token)


@contextlib.contextmanager
def scopes(path):
    """:func:`scope` for each name of ``path`` in turn."""
    with contextlib.ExitStack() as stack:
        for name in path:
            stack.enter_context(scope(name))
        yield


def current_path() -> str:
    return "/".join(_SCOPE.get()) or "<input>"


@contextlib.contextmanager
def capturing(paths):
    """``{path: output}`` of the layers at ``paths`` ("layer2", "layer2/0") traced by
    ``apply`` inside the block (the combinators report each named child's output)."""
    got: dict = {}
    token = _CAPTURE.set((frozenset(paths), got))
    try:
        yield got
    finally:
        _CAPTURE.reset(token)


def wanted(name: str) -> bool:
    """Whether the output of the child ``name`` of the layer being traced is asked for."""
    box = _CAPTURE.get()
    return box is not None and "/".join(_SCOPE.get() + (name,)) in box[0]


def captured(y) -> None:
    """Keep ``y``, the output of the layer being traced, if it is one asked for."""
    box = _CAPTURE.get()
    if box is not None:
        path = "/".join(_SCOPE.get())
        if path in box[0]:
            box[1][path] = y


def name_key(key, name: str):
    """A key derived from a layer's name, so keys stay stable when other layers change."""
    return None if key is None else jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


class Recorder:
    """Collects one row per primitive layer during ``init`` (see :mod:`zoo.summary`), and
    ``convs``: ``(layer path, implementation, input shape, kernel shape)`` for every conv
    traced by ``apply`` inside the block (what the model's conv policy chose), and
    ``conv_args``: each one's :func:`zoo.kernels.conv2d` arguments (what ``zoo.tune`` times).

    It also tracks the receptive field and cumulative stride (the "jump") of the
    activations flowing through the net: a k x k layer with dilation d and stride s maps
    ``rf -> rf + (d(k-1)) * jump`` and ``jump -> jump * s``. Parallel branches take the max.
    """

    def __init__(self):
        self.rows: list[dict] = []
        self.convs: list[tuple] = []
        self.conv_args: list[dict] = []   # the same convs' conv2d arguments, and train
        self.rf, self.jump = 1, 1
        self.ends: dict[str, tuple] = {}   # path -> (out shape, rf, jump) after each named child

    def end(self, out_shape) -> None:
        """The receptive field and stride after the named layer just initialised."""
        self.ends[current_path()] = (tuple(out_shape), self.rf, self.jump)

    def add(self, kind, out_shape, *, params=0, macs=0, activations=0, kernel=1, stride=1,
            dilation=1):
        self.rf += dilation * (kernel - 1) * self.jump
        self.jump *= stride
        self.rows.append(dict(name=current_path(), kind=kind, output_shape=tuple(out_shape),
                              params=int(params), activations=int(activations), macs=int(macs),
                              receptive_field=self.rf, stride=self.jump))


@contextlib.contextmanager
def recording():
    """A :class:`Recorder` for everything initialised or traced inside the block."""
    recorder = Recorder()
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def recorder() -> Recorder | None:
    """The open :class:`Recorder`, if any."""
    return _RECORDER.get()


@contextlib.contextmanager
def side_branch():
    """Initialise a side output (an auxiliary head) without moving the summary's receptive
    field and stride off the main path."""
    rec = _RECORDER.get()
    saved = (rec.rf, rec.jump) if rec is not None else None
    try:
        yield
    finally:
        if rec is not None:
            rec.rf, rec.jump = saved


def record(kind, out_shape, **info):
    """A summary row for the layer being initialised (when a recorder is open)."""
    rec = _RECORDER.get()
    if rec is not None:
        rec.add(kind, out_shape, **info)


def volume(shape) -> int:
    """Values per example of an activation of ``shape`` (N, ...)."""
    return int(np.prod(shape[1:]))


def output_size(size: int, window: int, stride: int, padding: int, dilation: int = 1,
                rounding: str = "exact", what: str = "") -> int:
    """``(W - F + 2P)/S + 1`` with the declared rounding rule (:mod:`zoo.kernels.geometry`);
    errors name the current layer. ``ceil`` follows Caffe/PyTorch: a last window that would
    start in the right padding is dropped."""
    return kernels.output_size(size, window, stride, padding, dilation, rounding,
                               current_path(), what)


def spatial_out(in_shape, window, stride, padding, dilation, rounding, what):
    return kernels.spatial_out(in_shape, window, stride, padding, dilation, rounding,
                               current_path(), what)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree (BatchNorm running statistics are state)."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))
