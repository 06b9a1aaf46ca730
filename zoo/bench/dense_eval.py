"""The notes' dense-evaluation comparison: a converted (fully-convolutional) net on one large
image against the training-size crops it stands for, as one batch and as separate calls."""
from __future__ import annotations

import time
from typing import Mapping, Sequence

import jax
import numpy as np

from .. import registry
from ..fully_conv import compare_with_crops, convert, crops
from ..kernels import xla
from ..summary import summary
from .timing import Runner, interleaved

#: How the converted head's convs run, as changes to the model's policy: ``im2col_head`` is
#: the policy's own choice (patches + one matmul), ``xla_head`` XLA's convolution.
HEAD_VARIANTS = {"im2col_head": {}, "xla_head": {"wide_patch": 0, "pointwise": False}}


def benchmark_dense_eval(model_name: str = "vgg16", size: int = 384, repeats: int = 3, *,
                         num_classes: int | None = None,
                         variants: Sequence[str] = ("im2col_head", "xla_head"),
                         crops_per_example: bool = False, seed: int = 0, log=print) -> dict:
    """The notes' comparison: the converted net on one ``size`` image against the crops
    of the training size at the network stride, as one batch and as separate calls, timed
    in one run (medians of ``repeats``, interleaved, after a warm-up that also compiles).

    ``variants`` of the converted pass (:data:`HEAD_VARIANTS`): ``im2col_head`` (the model's
    policy: the head convs as patches + one matmul, the same matrix products as the crops'
    dense layers) and ``xla_head`` (the head convs as XLA convolutions: the notes' plain
    implementation).
    ``crops_per_example``: also time the crops through ``lax.map`` in one program.
    Random weights (He init); speed does not depend on them. Returns seconds, GFLOP/s and
    the speedups beside the ideal FLOP ratio.
    """
    model = registry.create(model_name, **({} if num_classes is None else {"num_classes": num_classes}))
    variables = xla.jit(model.init, static_argnums=1)(jax.random.key(seed), model.default_input_shape())
    c = model.input_shape[-1]
    image = jax.random.normal(jax.random.key(seed + 1), (1, size, size, c))
    fcn, fvars = convert(model, variables)
    fcns = {}
    for variant in variants:
        if variant not in HEAD_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {sorted(HEAD_VARIANTS)}")
        fcns[variant] = fcn.with_policy(fcn.policy.replace(**HEAD_VARIANTS[variant]))
    batch, (rows, cols) = crops(image, fcn.train_size, fcn.stride)
    n_crops = rows * cols
    crop_macs = summary(model, model.input_shape).macs * n_crops
    big_macs = summary(fcn, (size, size, c)).macs
    result = dict(model=model_name, size=size, crops=n_crops, map=(rows, cols),
                  ideal_ratio=crop_macs / big_macs, gflop_big=2 * big_macs / 1e9,
                  gflop_crops=2 * crop_macs / 1e9, repeats=repeats)
    p, s = variables["params"], variables["state"]
    crop_fn = xla.jit(lambda p, s, x: model.apply(p, s, x)[0])
    singles = [batch[k:k + 1] for k in range(n_crops)]
    runners = {"crops_batched": lambda: crop_fn(p, s, batch),
               "crops_calls": lambda: [crop_fn(p, s, x1) for x1 in singles][-1]}
    if crops_per_example:
        map_fn = xla.jit(lambda p, s, x: jax.lax.map(
            lambda xi: model.apply(p, s, xi[None])[0][0], x))
        runners["crops_lax_map"] = lambda: map_fn(p, s, batch)
    for variant, f in fcns.items():
        fn = xla.jit(lambda p, s, x, f=f: f.apply(p, s, x)[0])
        runners[f"fcn_{variant}"] = lambda fn=fn: fn(fvars["params"], fvars["state"], image)
    outputs = {}
    for name, run in runners.items():  # warm-up: compiles
        t0 = time.perf_counter()
        outputs[name] = jax.block_until_ready(run())
        result[f"first_call_s/{name}"] = time.perf_counter() - t0
    # The same numbers? Only where no zero padding reaches a cell (see compare_with_crops).
    crop_scores = np.asarray(outputs["crops_batched"])
    for name in runners:
        if name.startswith("fcn_"):
            result[f"vs_crops/{name}"] = compare_with_crops(outputs[name][0], crop_scores)
    del outputs
    # interleaved, so that load changes hit every variant alike
    timing = interleaved([Runner(name, run, 1) for name, run in runners.items()],
                         rounds=repeats, min_rep_s=0.0, warmup=0, settle_below_s=0)
    for name, ts in timing["times"].items():
        result[name] = float(np.median(ts))
    result["crops_batched_gflops"] = result["gflop_crops"] / result["crops_batched"]
    for variant in fcns:
        t = result[f"fcn_{variant}"]
        result[f"gflops/fcn_{variant}"] = result["gflop_big"] / t
        result[f"speedup_vs_batched/fcn_{variant}"] = result["crops_batched"] / t
        result[f"speedup_vs_calls/fcn_{variant}"] = result["crops_calls"] / t
    if log:
        log(format_benchmark(result))
    return result


def format_benchmark(r: Mapping) -> str:
    lines = [f"{r['model']} dense evaluation at {r['size']}x{r['size']}: {r['map'][0]}x{r['map'][1]} "
             f"map = {r['crops']} crops; ideal FLOP ratio {r['ideal_ratio']:.2f}x "
             f"(medians of {r['repeats']})",
             f"  crops as one batch: {r['crops_batched']:.3f} s ({r['crops_batched_gflops']:.0f} GFLOP/s)",
             f"  crops as {r['crops']} calls: {r['crops_calls']:.3f} s"]
    if "crops_lax_map" in r:
        lines.append(f"  crops through lax.map: {r['crops_lax_map']:.3f} s")
    for key in r:
        if key.startswith("vs_crops/"):
            c = r[key]
            lines.append(f"  {key[9:]} vs crops: {c['agree']}/{c['positions']} cells equal "
                         f"(1e-4), same top class at {c['top1_agree']}, max relative "
                         f"difference {c['max_rel']:.3g}, mean {c['mean_rel']:.3g}")
    for key in r:
        if key.startswith("fcn_"):
            lines.append(f"  converted net, {key[4:]}: {r[key]:.3f} s ({r['gflops/' + key]:.0f} GFLOP/s); "
                         f"{r['speedup_vs_batched/' + key]:.2f}x vs batched crops, "
                         f"{r['speedup_vs_calls/' + key]:.2f}x vs calls (ideal {r['ideal_ratio']:.2f}x)")
    return "\n".join(lines)
