"""Benchmark helpers: matmul ceilings, FLOP counts, jitted inference and train steps in
float32 or bfloat16 (float32 accumulation), the torchvision counterparts, and interleaved
timing. ``scripts/benchmark.py`` is the command-line front end; docs/benchmarks.md holds a
full run.

Timing follows PERF-NOTES: medians of at least 5 timed repetitions after warm-up, each
ending in ``block_until_ready``, the runners being compared interleaved round by round in
one process (the machines are shared: compare ratios within a run, not across runs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from . import kernels, nn
from .kernels import xla
from .train import DTYPES, cross_entropy



# ----------------------------------------------------------------------------------------
# Ceilings and FLOP counts.

def matmul_peak(dtype: str = "float32", n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of one ``n x n`` ``jnp.dot`` (operands passed as arguments, so XLA cannot
    constant-fold them); bfloat16 inputs accumulate in float32 (``preferred_element_type``).
    The median of ``reps`` timed calls after a warm-up, the better of two compilations:
    ``jax.jit``'s defaults (YNNPACK's matmul, about 15% faster on a square 2048 product)
    and :func:`zoo.xla.jit` (XLA's own)."""
    dt = DTYPES[dtype]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)
    dot = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)  # noqa: E731
    best = 0.0
    for fn in (jax.jit(dot), xla.jit(dot)):
        times = time_calls(lambda: fn(a, b), reps)
        best = max(best, 2 * n ** 3 / statistics.median(times) / 1e9)
    return best


def forward_macs(model, image_shape) -> int:
    """Multiply-accumulates of one forward pass of ONE image of ``image_shape`` (H, W, C),
    the sum of the rows' ``macs`` recorded at init (the summary's numbers)."""
    box = []

    def run(key):
        with nn.recording() as rec:
            model.network.init(key, (1, *image_shape))
        box.extend(rec.rows)
        return jnp.zeros(())

    jax.eval_shape(run, jax.random.key(0))
    return int(sum(r["macs"] for r in box))


def time_calls(fn: Callable, reps: int, calls: int = 1) -> list[float]:
    """Seconds per call of ``reps`` timed repetitions (each ``calls`` calls, the last one
    blocked on), after one warm-up call."""
    jax.block_until_ready(fn())
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(calls):
            r = fn()
        _block(r)
        out.append((time.perf_counter() - t0) / calls)
    return out


def _block(r):
    if isinstance(r, (jax.Array, tuple, list, dict)):
        jax.block_until_ready(r)


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
        isa = [x for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {x}" in flags]
    except OSError:
        isa = []
    info = dict(cpu=cpu, isa=isa, cores=os.cpu_count(), python=platform.python_version(),
                jax=jax.__version__, backend=jax.default_backend(),
                devices=[str(d) for d in jax.devices()],
                xla_flags=os.environ.get("XLA_FLAGS", ""))
    with contextlib.suppress(OSError):
        info["load_average"] = os.getloadavg()
    with contextlib.suppress(ImportError):
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


# ----------------------------------------------------------------------------------------
# JAX runners.

@dataclasses.dataclass
class Runner:
    """One thing to time: ``step()`` runs one call (inference or train step) of ``batch``
    images; ``compile_s`` is its ahead-of-time compile time (0 for torch)."""

    name: str
    step: Callable[[], object]
    batch: int
    compile_s: float = 0.0
    note: str = ""


def _optimizer(name: str, lr: float = 0.01):
    import optax
    if name == "adam":
        return optax.adam(1e-3)
    if name == "sgd":
        return optax.sgd(lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def jax_runner(model, mode: str, batch: int, size: int, dtype: str = "float32", *,
               optimizer: str = "sgd", per_example: bool = False, name: str = "jax",
               seed: int = 0) -> Runner:
    """A compiled JAX inference call or train step on synthetic data, under the model's
    conv policy.

    ``mode='infer'``: ``apply(train=False)``, weights and input in ``dtype``.
    ``mode='train'``: one SGD-momentum (or Adam) step of the mean cross-entropy,
    ``value_and_grad`` through ``apply(train=True)`` (BatchNorm batch statistics, dropout
    with a per-step key); float32 master weights, the forward and backward in ``dtype``
    (bfloat16: float32 accumulation in every conv and matmul). The train state is donated
    and threaded from call to call, as in a training loop.
    ``per_example``: the inference batch goes through ``lax.map`` one image at a time
    inside the one program (PERF-NOTES: 2x for VGG16 at batch 8).
    """
    dt = DTYPES[dtype]
    c = model.input_shape[-1]
    shape = (batch, size, size, c)
    ncls = model.num_classes
    key = jax.random.key(seed)
    variables = xla.jit(model.init, static_argnums=1)(key, shape)
    params, state = variables["params"], variables["state"]
    x = jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32).astype(dt)
    y = jax.random.randint(jax.random.fold_in(key, 2), (batch,), 0, ncls)

    def cast(tree):
        return jax.tree_util.tree_map(lambda a: a.astype(dt) if a.dtype == jnp.float32 else a, tree)

    if mode == "infer":
        p = cast(params) if dtype != "float32" else params

        def infer(p, s, x):
            if per_example:
                return jax.lax.map(lambda xi: model.apply(p, s, xi[None])[0][0], x)
            return model.apply(p, s, x)[0]

        t0 = time.perf_counter()
        fn = xla.jit(infer).lower(p, state, x).compile()
        compile_s = time.perf_counter() - t0
        return Runner(name, lambda: fn(p, state, x), batch, compile_s)
    if mode != "train":
        raise ValueError(f"mode must be 'infer' or 'train', got {mode!r}")
    opt = _optimizer(optimizer)

    def loss_fn(params, state, x, y, rng):
        out, new_state = model.apply(cast(params) if dtype != "float32" else params, state, x,
                                     train=True, rng=rng)
        return jnp.mean(cross_entropy(out, y)), new_state

    def train_step(carry, x, y):
        params, state, opt_state, step = carry
        rng = jax.random.fold_in(key, step)
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, x, y, rng)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = jax.tree_util.tree_map(lambda a, u: a + u, params, updates)
        return (params, new_state, opt_state, step + 1), loss

    carry = (params, state, opt.init(params), jnp.zeros((), jnp.int32))
    t0 = time.perf_counter()
    fn = xla.jit(train_step, donate_argnums=0).lower(carry, x, y).compile()
    compile_s = time.perf_counter() - t0
    box = [carry]

    def step():
        box[0], loss = fn(box[0], x, y)
        return loss

    return Runner(name, step, batch, compile_s)


def compile_seconds(model, mode: str, batch: int, size: int, dtype: str = "float32", *,
                    optimizer: str = "sgd") -> tuple[float, float]:
    """``(trace+lower seconds, compile seconds)`` of the train step or inference call,
    nothing run (section 3 of the speed issue: deep ResNets compile slowly)."""
    dt = DTYPES[dtype]
    shape = (batch, size, size, model.input_shape[-1])
    abstract, _ = model.abstract_init(shape)
    x = jax.ShapeDtypeStruct(shape, dt)
    y = jax.ShapeDtypeStruct((batch,), jnp.int32)
    opt = _optimizer(optimizer)
    params, state = abstract["params"], abstract["state"]
    key = jax.random.key(0)

    def train_step(params, state, opt_state, x, y):
        def loss_fn(params):
            out, new_state = model.apply(params, state, x, train=True, rng=key)
            return jnp.mean(cross_entropy(out, y)), new_state
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return jax.tree_util.tree_map(lambda a, u: a + u, params, updates), new_state, opt_state, loss

    def infer(params, state, x):
        return model.apply(params, state, x)[0]

    t0 = time.perf_counter()
    if mode == "train":
        opt_state = jax.eval_shape(opt.init, params)
        lowered = xla.jit(train_step).lower(params, state, opt_state, x, y)
    else:
        lowered = xla.jit(infer).lower(params, state, x)
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def has_scanned_runs(model, input_shape) -> bool:
    """Whether the model's forward pass holds a ``lax.scan`` (``nn.Sequential(scan_repeats=)``)."""
    abstract, _ = model.abstract_init(input_shape)
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v["params"], v["state"], x)[0])(abstract, x)
    return any(eqn.primitive.name == "scan" for eqn in jaxpr.jaxpr.eqns)


# ----------------------------------------------------------------------------------------
# torch runners (optional dependency).

TORCHVISION = {"alexnet": "alexnet", "vgg16": "vgg16", "vgg11": "vgg11", "vgg13": "vgg13",
               "vgg19": "vgg19", "vgg16_bn": "vgg16_bn", "googlenet": "googlenet",
               "resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
               "resnet101": "resnet101", "resnet152": "resnet152"}


def torch_model(name: str, num_classes: int):
    """The torchvision counterpart of a zoo model (random weights), or LeNet-5's modern
    reading written here (torchvision has none)."""
    import torch
    from torch import nn as tnn
    if name == "lenet5":
        return tnn.Sequential(
            tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2, 2),
            tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2, 2), tnn.Flatten(),
            tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
            tnn.Linear(84, num_classes))
    if name not in TORCHVISION:
        raise KeyError(f"no torch counterpart for {name!r}")
    import torchvision
    kwargs = dict(weights=None, num_classes=num_classes)
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    torch.manual_seed(0)
    return getattr(torchvision.models, TORCHVISION[name])(**kwargs)


def torch_runner(name: str, mode: str, batch: int, size: int, channels: int, num_classes: int,
                 dtype: str = "float32", *, channels_last: bool = False, optimizer: str = "sgd",
                 label: str | None = None) -> Runner:
    """The torch eager counterpart: ``inference_mode`` forward, or a forward + backward +
    optimizer step (bfloat16: ``torch.autocast``). NCHW or channels_last memory format."""
    import torch
    model = torch_model(name, num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" \
        else contextlib.nullcontext
    label = label or ("torch_cl" if channels_last else "torch")
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                return model(x)

        return Runner(label, step, batch)
    model.train()
    opt = (torch.optim.Adam(model.parameters(), 1e-3) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
            out = out.logits if hasattr(out, "logits") else out
            loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()
        return loss

    return Runner(label, step, batch)


# ----------------------------------------------------------------------------------------
# Interleaved timing.

def interleaved(runners: Sequence[Runner], rounds: int = 5, min_rep_s: float = 0.2,
                warmup: int = 2) -> dict:
    """Time ``runners`` round by round: each round runs every runner once (the order
    rotating), one repetition being ``calls`` calls (chosen at warm-up so a repetition
    lasts about ``min_rep_s``). Returns per runner its seconds per call of every round."""
    calls = {}
    for r in runners:
        t0 = time.perf_counter()
        for _ in range(warmup):
            _block(r.step())
        per = (time.perf_counter() - t0) / warmup
        calls[r.name] = max(1, int(min_rep_s / max(per, 1e-6)))
    times = {r.name: [] for r in runners}
    for k in range(rounds):
        order = list(runners[k % len(runners):]) + list(runners[:k % len(runners)])
        for r in order:
            n = calls[r.name]
            t0 = time.perf_counter()
            for _ in range(n):
                out = r.step()
            _block(out)
            times[r.name].append((time.perf_counter() - t0) / n)
    return dict(times=times, calls=calls)


def stats(seconds: Sequence[float], batch: int, flops: float | None = None,
          peak: float | None = None) -> dict:
    """img/s median, min, max (from seconds per call) and the achieved GFLOP/s."""
    med = statistics.median(seconds)
    out = dict(seconds_median=med, img_s_median=batch / med, img_s_min=batch / max(seconds),
               img_s_max=batch / min(seconds), reps=len(seconds))
    if flops:
        out["gflops"] = flops / med / 1e9
        if peak:
            out["fraction_of_peak"] = out["gflops"] / peak
    return out


def conv_choices(model, input_shape, *, dtype: str = "float32") -> list[tuple]:
    """What each conv of ``model`` runs as for ``input_shape`` under its policy (traced
    abstractly, nothing computed): rows ``(path, impl, input shape, kernel shape)``."""
    abstract, _ = model.abstract_init(input_shape)
    x = jax.ShapeDtypeStruct(tuple(input_shape), DTYPES[dtype])
    with nn.recording() as rec:
        jax.eval_shape(lambda p, s, x: model.apply(p, s, x)[0], abstract["params"],
                       abstract["state"], x)
    return rec.convs


#: Lever variants: name -> (changes to the model's policy, applies to 'infer'/'train'), each
#: measured against the model's own policy in the same run.
LEVER_VARIANTS = {
    "xla": ({"impl": "xla"}, ("infer", "train")),                 # plain JAX: every conv XLA's
    "no_small_map": ({"small_map": 0}, ("infer", "train")),
    "no_pointwise": ({"pointwise": False}, ("infer", "train")),
    "no_single_channel": ({"single_channel": False}, ("infer", "train")),
    "mmgrad": ({"weight_grad": "matmul"}, ("train",)),  # the matmul weight gradient on
    "no_input_grad": ({"input_grad": "autodiff"}, ("train",)),
    "no_store_input": ({"store_input": False}, ("train",)),
    "no_winograd": ({"winograd": ()}, ("infer", "train")),
    "bf16_native": ({"low_precision": "native"}, ("infer", "train")),
}


def lever_variants(model, mode: str, input_shape, dtype: str) -> dict:
    """``{name: model under the varied policy}`` for the :data:`LEVER_VARIANTS` that change
    something for this model and mode (their conv choices differ from its own policy's, or
    the lever acts in this mode and dtype)."""
    custom = kernels.CUSTOM_CONVS

    def same_program(rows):  # in inference the custom convs with XLA's forward run just that
        return [(p, "xla" if mode == "infer" and i in custom and custom[i].forward == "xla"
                 else i, x, w) for p, i, x, w in rows]

    base = same_program(conv_choices(model, input_shape, dtype=dtype))
    out = {}
    for name, (changes, modes) in LEVER_VARIANTS.items():
        if mode not in modes:
            continue
        variant = model.with_policy(model.policy.replace(**changes))
        if name == "bf16_native":
            if dtype != "bfloat16":
                continue
        elif name == "no_input_grad":
            if not any(c[1] in custom and custom[c[1]].input_grad is None for c in base):
                continue
        elif same_program(conv_choices(variant, input_shape, dtype=dtype)) == base:
            continue
        out[name] = variant
    return out
