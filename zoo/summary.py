"""Per-layer table of a model, as the cs231n notes lay out VGGNet: output volume, parameters,
activations, multiply-accumulates, receptive field and cumulative stride.

Conventions (those of the notes' VGG16 table):
- activations: the output volume of every conv, pool and dense layer, plus the input volume
  once, per image. Element-wise layers (ReLU, BatchNorm, dropout, LRN) work in place and add
  nothing. For VGG16 at 224 this gives 15,237,608 values: the sum of the notes' own rows
  (their "TOTAL memory: 24M" is a slip; their rows add up to 15.2M).
- macs: multiply-accumulates of conv and dense layers.
- memory: 4 bytes per float32 activation, forward only; about x2 with the backward pass.
Everything is computed from shapes alone (``jax.eval_shape``): no weights are allocated.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import nn
from .registry import Model, create

COLUMNS = ("name", "output_shape", "params", "activations", "macs", "receptive_field", "stride")


@dataclasses.dataclass
class Summary:
    model: str
    input_shape: tuple[int, ...]
    rows: list[dict]
    params: int
    activations: int
    macs: int

    @property
    def forward_megabytes(self) -> float:
        return self.activations * 4 / 2**20

    def row(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"{self.model} has no layer {name!r}; layers: {[r['name'] for r in self.rows]}")

    def table(self) -> str:
        head = f"{'layer':<34} {'output':>16} {'params':>12} {'activations':>12} {'MACs':>15} {'RF':>5} {'stride':>6}"
        lines = [f"{self.model} at {self.input_shape[1:]}", head, "-" * len(head)]
        lines.append(f"{'input':<34} {'x'.join(map(str, self.input_shape[1:])):>16} {'':>12} "
                     f"{int(np.prod(self.input_shape[1:])):>12,}")
        for r in self.rows:
            shape = "x".join(map(str, r["output_shape"][1:]))
            lines.append(f"{r['name']:<34} {shape:>16} {r['params']:>12,} {r['activations']:>12,} "
                         f"{r['macs']:>15,} {r['receptive_field']:>5} {r['stride']:>6}")
        lines.append("-" * len(head))
        lines.append(f"total params {self.params:,}; activations {self.activations:,} per image "
                     f"= {self.forward_megabytes:.2f} MB forward, ~{2 * self.forward_megabytes:.2f} MB "
                     f"with backward (float32); MACs {self.macs:,} ({self.macs / 1e9:.3f} G)")
        return "\n".join(lines)


def summary(name_or_model: str | Model, input_shape=None, **config) -> Summary:
    """Summarise a model (a registered name, built with ``config``, or a :class:`Model`)
    for ``input_shape``: (H, W, C) or (N, H, W, C); default one image at the native size.
    Figures are per image; nothing is allocated or computed.

        zoo.summary("vgg16", (224, 224, 3)).params   # 138,357,544"""
    model = create(name_or_model, **config) if isinstance(name_or_model, str) else name_or_model
    shape = tuple(input_shape) if input_shape is not None else model.default_input_shape(1)
    if len(shape) == 3:
        shape = (1, *shape)
    with nn.recording() as recorder:
        variables, _ = model.abstract_init(shape)
    rows = [{k: r[k] for k in COLUMNS} for r in recorder.rows]
    input_volume = int(np.prod(shape[1:]))
    return Summary(
        model=model.name, input_shape=shape, rows=rows,
        params=nn.count_params(variables["params"]),
        activations=input_volume + sum(r["activations"] for r in recorder.rows),
        macs=sum(r["macs"] for r in recorder.rows))
