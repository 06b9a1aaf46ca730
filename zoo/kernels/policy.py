"""How each convolution runs: :class:`ConvPolicy`, a frozen value carried by the model.

A policy is part of the model (``zoo.create(name, conv_policy=...)``,
``model.with_policy(p)``), never module state: a jitted function traced for one policy can
never be reused for another, because another policy is another model. Every field's
measurements are in docs/benchmarks.md ("How the convolutions are chosen").
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .native import DTYPES as NATIVE_DTYPES, amx_here
from .winograd import tile_grid

#: What :meth:`ConvPolicy.choose` may answer; every one gives XLA's values and gradients
#: within float tolerance.
IMPLS = ("xla", "im2col", "xla+stored", "xla+mmgrad", "taps", "winograd", "xla+phases",
         "xla+colgrad", "amx")
FORCED = ("auto", "xla", "im2col")


#: 'taps' unrolls kh*kw*Cin*Cout multiply-adds into the program: beyond this many it is
#: never a candidate (LeNet-5's conv1 has 150; AlexNet's stem 23,232).
TAPS_MAX_TERMS = 1024
#: im2col materialises kh*kw copies of the input: no candidate whose buffer exceeds this.
IM2COL_MAX_BYTES = 1 << 30
#: Winograd's input dtypes: float32, and bfloat16 (transformed in float32, multiplied as
#: bfloat16); float16 is unmeasured.
WINOGRAD_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


class ConvGeometry(NamedTuple):
    """What the policy looks at: shapes (NHWC input, HWIO kernel), stride, dilation, groups,
    the output map and the input dtype."""
    x_shape: tuple
    w_shape: tuple
    stride: tuple
    dilation: tuple
    groups: int
    out_hw: tuple
    dtype: object = jnp.float32

    @property
    def pixels(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    def key(self, train: bool = False) -> str:
        """The name a measured choice is stored under (:attr:`ConvPolicy.tuned`): dtype,
        mode, input, kernel, stride, dilation, groups, output map."""
        dims = lambda t: "x".join(map(str, t))  # noqa: E731
        return (f"{jnp.dtype(self.dtype).name} {'train' if train else 'infer'} "
                f"x{dims(self.x_shape)} k{dims(self.w_shape)} s{dims(self.stride)} "
                f"d{dims(self.dilation)} g{self.groups} o{dims(self.out_hw)}")

    @classmethod
    def from_key(cls, key: str) -> tuple["ConvGeometry", bool]:
        """``(geometry, train)`` back from :meth:`key`; ValueError names a malformed key."""
        try:
            dtype, mode, x, k, s, d, g, o = key.split(" ")
            fields = dict(zip("xksdgo", (x, k, s, d, g, o)))
            if mode not in ("train", "infer") or any(v[0] != c for c, v in fields.items()):
                raise ValueError
            dims = {c: tuple(int(n) for n in v[1:].split("x")) for c, v in fields.items()}
            return cls(dims["x"], dims["k"], dims["s"], dims["d"], int(g[1:]), dims["o"],
                       jnp.dtype(dtype)), mode == "train"
        except (ValueError, TypeError):
            raise ValueError(f"not a conv geometry key: {key!r} (expected e.g. 'float32 infer "
                             f"x8x56x56x64 k3x3x64x64 s1x1 d1x1 g1 o56x56')") from None

    def phases_shape(self) -> bool:
        """Whether the input gradient splits into stride-1 phases: strided, undilated,
        ungrouped."""
        return (max(self.stride) > 1 and tuple(self.dilation) == (1, 1) and self.groups == 1)

    def winograd_shape(self) -> bool:
        """Whether F(2x2, 3x3) computes it: 3x3, stride 1, undilated, ungrouped."""
        return winograd_computes(self.w_shape, self.stride, self.dilation, self.groups)


def winograd_computes(w_shape, stride, dilation, groups) -> bool:
    return (tuple(w_shape[:2]) == (3, 3) and tuple(stride) == tuple(dilation) == (1, 1)
            and groups == 1)


@dataclasses.dataclass(frozen=True)
class ConvPolicy:
    """Every decision about how a convolution runs. ``ConvPolicy()`` is the CPU default;
    :meth:`xla` gives every conv to XLA (portable: what accelerators and exported programs
    get). Change fields with :meth:`replace`."""

    #: 'auto': decide per layer by the rules below; 'xla' or 'im2col': every conv so.
    impl: str = "auto"
    #: output maps of at most this many pixels run as im2col + one matmul (0: never).
    small_map: int = 16
    #: 1x1 convolutions (any stride) as a strided slice + one matmul.
    pointwise: bool = True
    #: patches of at least this many values (kh*kw*Cin: a dense layer made a conv) as im2col.
    wide_patch: int = 8192
    #: one input channel as 'taps': kh*kw shifted multiply-adds per output plane.
    single_channel: bool = True
    #: input gradient of the custom convs: 'conv' (one explicit forward conv) or 'autodiff'.
    input_grad: str = "conv"
    #: weight gradient outside scanned runs: 'xla' or 'matmul' (im2col(x)^T @ dy).
    weight_grad: str = "xla"
    #: 'matmul' weight gradient only for patches of >= this many values...
    mmgrad_min_k: int = 256
    #: ...and output maps of >= this many pixels.
    mmgrad_min_map: int = 144
    #: bytes of the im2col buffer per step of the matmul weight gradient.
    chunk_bytes: int = 16 << 20
    #: zoo's compiled CPU kernels (zoo.kernels.native) where they apply: in float32 max
    #: pooling, training BatchNorm's sums and max pooling's gradient, and the convolutions
    #: below; in bfloat16 every ungrouped, undilated conv's forward (and stride-1 input
    #: gradient) on a CPU with AMX tiles; False: XLA's forms only.
    native: bool = True
    #: custom convs (ungrouped, undilated) with output maps of at least this many pixels, or
    #: strided ones reading input maps that big, take their weight gradient from the compiled
    #: kernel instead of XLA's; 0: never.
    native_grad_min_map: int = 400
    #: custom convs with XLA's forward (float32, ungrouped, undilated) take the compiled
    #: forward (and, at stride 1, input gradient) on output maps of up to this many pixels,
    #: and image convs (<= 4 input channels) on any map; 0: never.
    native_forward_max_map: int = 12544
    #: strided convs (undilated, ungrouped) with output maps of at least this many pixels
    #: take the input gradient as stride**2 stride-1 convs of dy, one per output phase
    #: ('xla+phases'), not XLA's transposed conv over a zero-dilated dy; 0: never.
    phases_min_map: int = 100
    #: other convs keep their input as a stored buffer for XLA's weight gradient ('xla+stored').
    store_input: bool = True
    #: Winograd F(2x2, 3x3) where a (max output pixels, min channels in and out) pair admits.
    winograd: tuple = ((784, 32), (9216, 256))
    #: Winograd only on output maps of at least this many pixels...
    winograd_min_map: int = 100
    #: ...and with at least this many 2x2 tiles in the batch (the rows of its products).
    winograd_min_tiles: int = 128
    #: bfloat16/float16 convs: 'f32acc' accumulates in float32, 'native' leaves it to XLA.
    low_precision: str = "f32acc"
    #: apply the rules on the CPU only; accelerators get XLA's convolution.
    cpu_only: bool = True
    #: Sequentials marked scannable run runs of at least this many identical layers as one
    #: lax.scan (compile time; 0: never).
    scan_min_run: int = 6
    #: set by Sequential for the body of a scanned run: its convs take matmul-form gradients.
    loop_body: bool = False
    #: measured choices, ``((ConvGeometry.key(train), impl), ...)``, consulted before the
    #: rules above outside scanned runs (``zoo.tune`` measures them on the machine at hand).
    tuned: tuple = ()

    def __post_init__(self):
        choices = {"impl": FORCED, "input_grad": ("conv", "autodiff"),
                   "weight_grad": ("xla", "matmul"), "low_precision": ("f32acc", "native")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ConvPolicy.{name} must be one of {allowed}, got "
                                 f"{getattr(self, name)!r}")
        tiers = tuple((int(m), int(c)) for m, c in self.winograd)  # lists -> hashable
        object.__setattr__(self, "winograd", tiers)
        table = tuple((str(k), str(v)) for k, v in dict(self.tuned).items())
        for key, impl in table:
            if impl not in IMPLS:
                raise ValueError(f"ConvPolicy.tuned: {key!r} -> {impl!r}; an implementation "
                                 f"must be one of {IMPLS}")
        object.__setattr__(self, "tuned", tuple(sorted(table)))
        for name in ("small_map", "wide_patch", "mmgrad_min_k", "mmgrad_min_map", "chunk_bytes",
                     "native_grad_min_map", "native_forward_max_map", "phases_min_map",
                     "winograd_min_map",
                     "winograd_min_tiles", "scan_min_run"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"ConvPolicy.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def xla(cls) -> "ConvPolicy":
        """Every convolution XLA's own, on every backend, and no compiled kernel (the
        portable program: what accelerators and exported programs get)."""
        return cls(impl="xla", native=False)

    def replace(self, **changes) -> "ConvPolicy":
        """A copy with ``changes``; an unknown field is an error that lists the fields."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise ValueError(f"unknown ConvPolicy fields {unknown}; fields: {sorted(fields)}")
        return dataclasses.replace(self, **changes)

    def for_loop_body(self) -> "ConvPolicy":
        return self if self.loop_body else dataclasses.replace(self, loop_body=True)

    def active(self) -> bool:
        """Whether the rules apply on this backend (else every conv is XLA's)."""
        return not (self.cpu_only and jax.default_backend() != "cpu")

    @functools.cached_property
    def _table(self) -> dict:
        return dict(self.tuned)

    def choose(self, g: ConvGeometry, train: bool = False) -> str:
        """The implementation for one traced convolution (one of :data:`IMPLS`): the measured
        one where :attr:`tuned` has this geometry and mode, else :meth:`rule`'s."""
        if self.impl != "auto":
            return self.impl
        if not self.active():
            return "xla"
        if self.tuned and not self.loop_body:
            measured = self._table.get(g.key(train))
            if measured in candidates(g, train):
                return measured
        return self.rule(g, train)

    def rule(self, g: ConvGeometry, train: bool = False) -> str:
        """The hand-tuned rules below, tried in order (docs/benchmarks.md gives each one's
        measurements; ``train``: the conv runs in a train step)."""
        kh, kw, cin_g, cout = g.w_shape
        if self.native_amx(g) and amx_here():
            return "amx"
        if g.pixels <= self.small_map:
            return "im2col"
        if g.groups == 1 and ((self.pointwise and kh == kw == 1)
                              or (self.wide_patch and kh * kw * cin_g >= self.wide_patch)):
            return "im2col"
        if g.groups == 1 and (self.loop_body or (
                self.weight_grad == "matmul" and kh * kw * cin_g >= self.mmgrad_min_k
                and cout >= 32 and g.pixels >= self.mmgrad_min_map)):
            return "xla+mmgrad"
        if self.single_channel and g.x_shape[3] == 1 and g.groups == 1:
            return "taps"
        # in a train step, the compiled forward and both compiled gradients before Winograd's
        if self.winograd_fits(g) and not (train and self.native_forward(g)
                                          and self.native_grad(g)):
            return "winograd"
        if self.phases_min_map and g.phases_shape() and g.pixels >= self.phases_min_map:
            return "xla+phases"
        return "xla+stored" if self.store_input else "xla"

    def winograd_fits(self, g: ConvGeometry) -> bool:
        # bfloat16 only accumulating in float32, the type its transforms then run in
        dtype = jnp.dtype(g.dtype)
        if not (g.winograd_shape() and dtype in WINOGRAD_DTYPES
                and (dtype == jnp.float32 or self.accumulation(dtype) is not None)):
            return False
        channels = min(g.x_shape[3], g.w_shape[3])
        tiles = g.x_shape[0] * math.prod(tile_grid(g.out_hw))
        return (g.pixels >= self.winograd_min_map and tiles >= self.winograd_min_tiles
                and any(g.pixels <= max_map and channels >= min_channels
                        for max_map, min_channels in self.winograd))

    def native_grad(self, g: ConvGeometry) -> bool:
        """Whether a custom conv of ``g`` asks for the compiled weight gradient (whether it
        runs here is :func:`zoo.kernels.native.available`)."""
        strided = tuple(g.stride) != (1, 1)
        big = max(g.pixels, g.x_shape[1] * g.x_shape[2] if strided else 0)
        return (self._compiled(g) and bool(self.native_grad_min_map)
                and big >= self.native_grad_min_map)

    def native_forward(self, g: ConvGeometry) -> bool:
        """Whether a custom conv of ``g`` with XLA's forward asks for the compiled forward."""
        if not (self._compiled(g) and self.native_forward_max_map) or self.loop_body:
            return False
        return g.x_shape[3] <= 4 or g.pixels <= self.native_forward_max_map

    def _compiled(self, g: ConvGeometry) -> bool:
        """Whether zoo's compiled float32 conv kernels could take ``g`` at all: ungrouped,
        undilated, on the CPU, with ``native`` on."""
        return (self.native and self.active() and g.groups == 1
                and tuple(g.dilation) == (1, 1) and jnp.dtype(g.dtype) in NATIVE_DTYPES)

    def native_amx(self, g: ConvGeometry) -> bool:
        """Whether a conv of ``g`` asks for ``'amx'``, the bfloat16 forward on AMX tiles
        (chosen where :func:`zoo.kernels.native.amx_here`; its stride-1 input gradient runs
        there too, its weight gradient is XLA's)."""
        return (self.native and self.impl == "auto" and self.active() and g.groups == 1
                and tuple(g.dilation) == (1, 1) and jnp.dtype(g.dtype) == jnp.bfloat16)

    def native_for(self, dtype) -> bool:
        """Whether a layer on ``dtype`` inputs asks for a compiled kernel (BatchNorm's sums,
        max pooling and its gradient; whether they run here is
        :func:`zoo.kernels.native.available`)."""
        return self.native and self.active() and jnp.dtype(dtype) in NATIVE_DTYPES

    def accumulation(self, dtype):
        """``preferred_element_type`` for a conv or matmul on ``dtype`` inputs: float32 for
        bfloat16/float16 under 'f32acc' on the CPU, else XLA's default (None)."""
        low = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        if not low or self.low_precision != "f32acc":
            return None
        return jnp.float32 if self.active() else None  # accelerators accumulate in float32


def candidates(g: ConvGeometry, train: bool = False) -> tuple:
    """The implementations that can run ``g`` (what ``zoo.tune`` measures). In inference
    the custom convs with XLA's forward are XLA's convolution, so only their distinct
    programs are listed."""
    kh, kw, cin_g, cout = g.w_shape
    out = ["xla"]
    cols = g.x_shape[0] * g.pixels * kh * kw * cin_g * g.groups * jnp.dtype(g.dtype).itemsize
    if cols <= IM2COL_MAX_BYTES:
        out.append("im2col")
    if train:
        out.append("xla+stored")
        if g.groups == 1:
            out.append("xla+mmgrad")
    if g.groups == 1 and kh * kw * cin_g * cout <= TAPS_MAX_TERMS:
        out.append("taps")
    if g.winograd_shape() and jnp.dtype(g.dtype) in WINOGRAD_DTYPES:
        out.append("winograd")
    if train and g.phases_shape():
        out.append("xla+phases")
    if train and g.groups == 1 and cols <= IM2COL_MAX_BYTES:
        out.append("xla+colgrad")
    if (g.groups == 1 and tuple(g.dilation) == (1, 1) and jnp.dtype(g.dtype) == jnp.bfloat16
            and amx_here()):
        out.append("amx")
    return tuple(out)
