"""What is timed: a compiled JAX inference call or train step on synthetic data under the
model's conv policy (compiled by ``zoo.jit`` or by a user's plain ``jax.jit``), its compile
time, and the torch eager counterpart."""
from __future__ import annotations

import contextlib
import functools
import time

import jax
import jax.numpy as jnp

from .. import registry
from ..kernels import xla
from ..train import DTYPES, cross_entropy

from .timing import Runner


def _optimizer(name: str, lr: float = 0.01):
    import optax
    if name == "adam":
        return optax.adam(1e-3)
    if name == "sgd":
        return optax.sgd(lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


#: how the JAX runners compile: zoo.jit, or a user's plain jax.jit
JITS = ("zoo", "jax")


def _jit(name: str, low_precision: bool = False):
    if name not in JITS:
        raise ValueError(f"jit must be one of {', '.join(JITS)}, got {name!r}")
    if name == "jax":
        return jax.jit
    return functools.partial(xla.jit, low_precision=True) if low_precision else xla.jit


def jax_runner(model, mode: str, batch: int, size: int, dtype: str = "float32", *,
               optimizer: str = "sgd", per_example: bool = False, name: str = "jax",
               seed: int = 0, jit: str = "zoo") -> Runner:
    """A compiled JAX inference call or train step on synthetic data, under the model's
    conv policy.

    ``mode='infer'``: ``apply(train=False)``, weights and input in ``dtype``.
    ``mode='train'``: one SGD-momentum (or Adam) step of the mean cross-entropy,
    ``value_and_grad`` through ``apply(train=True)`` (BatchNorm batch statistics, dropout
    with a per-step key); float32 master weights, the forward and backward in ``dtype``
    (bfloat16: float32 accumulation in every conv and matmul). The train state is donated
    and threaded from call to call, as in a training loop.
    ``per_example``: the inference batch goes through ``lax.map`` one image at a time
    inside the one program.
    ``jit='zoo'`` compiles with :func:`zoo.jit`; ``'jax'`` with plain ``jax.jit``: what a
    user's own jit gets (zoo's process-wide ``XLA_FLAGS`` entry unless opted out).
    """
    compile_with = _jit(jit, low_precision=dtype != "float32")
    dt = DTYPES[dtype]
    c = model.input_shape[-1]
    shape = (batch, size, size, c)
    ncls = model.num_classes
    key = jax.random.key(seed)
    variables = compile_with(model.init, static_argnums=1)(key, shape)
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
        fn = compile_with(infer).lower(p, state, x).compile()
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
    fn = compile_with(train_step, donate_argnums=0).lower(carry, x, y).compile()
    compile_s = time.perf_counter() - t0
    box = [carry]

    def step():
        box[0], loss = fn(box[0], x, y)
        return loss

    return Runner(name, step, batch, compile_s)


def compile_seconds(model, mode: str, batch: int, size: int, dtype: str = "float32", *,
                    optimizer: str = "sgd") -> tuple[float, float]:
    """``(trace+lower seconds, compile seconds)`` of the train step or inference call,
    nothing run (deep ResNets compile slowly: this says how slowly)."""
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

def torch_model(name: str, num_classes: int):
    """The torchvision counterpart of a zoo model (random weights): the models whose family
    registers torchvision key rules have one of the same name; LeNet-5's modern reading is
    written here (torchvision has none)."""
    import torch
    from torch import nn as tnn
    if name == "lenet5":
        return tnn.Sequential(
            tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2, 2),
            tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2, 2), tnn.Flatten(),
            tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
            tnn.Linear(84, num_classes))
    if registry.spec(name).torchvision is None:
        raise KeyError(f"no torch counterpart for {name!r}")
    import torchvision
    kwargs = dict(weights=None, num_classes=num_classes)
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(**kwargs)


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


def nnx_runner(model, batch: int, size: int, *, optimizer: str = "sgd", seed: int = 0,
               name: str = "nnx") -> Runner:
    """The train step of the model as a Flax NNX module (:class:`zoo.flax.NNX`), as an NNX
    user writes it: ``nnx.Optimizer`` and ``nnx.value_and_grad`` under ``nnx.jit``, called
    through ``nnx.cached_partial`` (nnx's way to skip re-walking the module's graph on each
    call), the same loss, optimizer and synthetic batch as :func:`jax_runner`'s train step
    (float32)."""
    from flax import nnx

    from ..flax import NNX

    c = model.input_shape[-1]
    key = jax.random.key(seed)
    module = NNX(model, input_shape=(batch, size, size, c), rngs=nnx.Rngs(seed))
    module.train()
    opt = nnx.Optimizer(module, _optimizer(optimizer), wrt=nnx.Param)
    x = jax.random.normal(jax.random.fold_in(key, 1), (batch, size, size, c), jnp.float32)
    y = jax.random.randint(jax.random.fold_in(key, 2), (batch,), 0, model.num_classes)

    @nnx.jit
    def step(module, opt, x, y):
        def loss_fn(module):
            return jnp.mean(cross_entropy(module(x), y))

        loss, grads = nnx.value_and_grad(loss_fn)(module)
        opt.update(module, grads)
        return loss

    cached = nnx.cached_partial(step, module, opt)
    t0 = time.perf_counter()
    jax.block_until_ready(cached(x, y))   # nnx.jit compiles on the first call
    return Runner(name, lambda: cached(x, y), batch, time.perf_counter() - t0)

