"""What ``zoo.tune`` times: each distinct convolution of a model's forward or train step,
alone, under each implementation that can run it; and the whole model under two policies."""
from __future__ import annotations

import statistics
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import kernels, nn
from ..kernels import native
from ..kernels.conv import CUSTOM_CONVS
from ..kernels.policy import ConvGeometry, ConvPolicy, candidates


#: Implementations that differ from XLA's convolution only in the input gradient: not
#: candidates for a conv whose input gradient no one needs (the image's).
INPUT_GRAD_FORMS = ("xla+phases", "xla+colgrad")


def native_here(g: ConvGeometry, train: bool, policy: ConvPolicy | None = None) -> bool:
    """Whether the custom convs of ``g`` take one of zoo's compiled kernels under ``policy``
    (default ``ConvPolicy()``) on this machine: the forward, or in a train step the weight
    gradient."""
    policy = policy or ConvPolicy()
    asks = policy.native_forward(g) or (train and policy.native_grad(g))
    return asks and native.available()


class ConvCall(NamedTuple):
    """One distinct convolution of a traced model: its geometry, its :func:`conv2d`
    arguments, the mode, whether its input gradient is needed, the policy it ran under, and
    how many of the model's convs share its geometry (``uses``)."""
    where: str
    geometry: ConvGeometry
    args: dict
    train: bool
    needs_dx: bool
    policy: ConvPolicy
    uses: int = 1

    @property
    def key(self) -> str:
        return self.geometry.key(self.train)

    @property
    def native(self) -> bool:
        """Whether its custom convs take a compiled kernel here (:func:`native_here`)."""
        return native_here(self.geometry, self.train, self.policy)

    def default_impl(self) -> str:
        """What the hand-tuned rules run it as (where no one needs its input gradient, a
        form that only changes that is the stored-input program, named so)."""
        impl = self.policy.replace(tuned=()).choose(self.geometry, self.train)
        return "xla+stored" if not self.needs_dx and impl in INPUT_GRAD_FORMS else impl

    def candidates(self) -> tuple:
        """What can run it, one name per distinct program: in inference a custom conv with
        XLA's forward is XLA's convolution, named as the rules name it (unless zoo's
        compiled forward takes it: then both run); a conv whose input gradient no one needs
        (the image's) leaves out the one that only changes that."""
        out = candidates(self.geometry, self.train)
        default = self.default_impl()
        if (not self.train and default in CUSTOM_CONVS and CUSTOM_CONVS[default].forward == "xla"
                and not self.native):
            out = tuple(default if i == "xla" else i for i in out)
        elif not self.train and self.native and default not in out:
            out = (*out, default)
        return out if self.needs_dx else tuple(i for i in out if i not in INPUT_GRAD_FORMS)


def traced_convs(model, input_shape, *, train: bool = False, dtype=jnp.float32) -> nn.Recorder:
    """The :class:`zoo.nn.Recorder` of ``model.apply`` on ``input_shape`` traced abstractly
    (nothing computed; ``train``: as in a train step): its ``convs`` and ``conv_args``."""
    abstract, _ = model.abstract_init(input_shape)
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.dtype(dtype))
    rng = jax.random.key(0)
    with nn.recording() as rec:
        jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=train, rng=rng, check=False)[0],
                       abstract["params"], abstract["state"], x)
    return rec


def convs_of(model, input_shape, *, train: bool = False, dtype=jnp.float32) -> list[ConvCall]:
    """The distinct convolutions ``model.apply`` runs on ``input_shape``, in order; those
    inside a scanned run and those with an implementation fixed by the layer are left out
    (the measured table does not decide them)."""
    rec = traced_convs(model, input_shape, train=train, dtype=dtype)
    calls: dict[str, ConvCall] = {}
    for a in rec.conv_args:
        policy = a["policy"] or model.policy
        if policy.loop_body or a["impl"] not in (None, "auto"):
            continue
        args = {k: a[k] for k in ("stride", "padding", "dilation", "groups", "rounding")}
        g, _ = kernels.conv.geometry(a["x_shape"], a["w_shape"], dtype=a["dtype"], **args)
        needs_dx = train and tuple(a["x_shape"]) != tuple(input_shape)  # the image needs none
        call = ConvCall(a["where"], g, args, bool(train), needs_dx, policy)
        if call.key in calls:
            seen = calls[call.key]
            calls[call.key] = seen._replace(needs_dx=seen.needs_dx or needs_dx,
                                            uses=seen.uses + 1)
            continue
        calls[call.key] = call
    return list(calls.values())


def conv_program(call: ConvCall, impl: str) -> tuple[Callable, tuple]:
    """``(compiled function, its arguments)`` running ``call`` as ``impl``: the forward in
    inference; in training the forward, the weight gradient and (but for the image's conv)
    the input gradient, as a train step runs them."""
    g = call.geometry
    policy = call.policy.replace(tuned=())
    kw = dict(call.args, impl=impl, policy=policy, train=call.train, where=call.where)
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal(g.x_shape, np.float32), g.dtype)
    w = jnp.asarray(r.standard_normal(g.w_shape, np.float32) * 0.05, g.dtype)

    if not call.train:
        fn, args = (lambda x, w: kernels.conv2d(x, w, **kw)), (x, w)
    else:
        dy = jnp.asarray(r.standard_normal((g.x_shape[0], *g.out_hw, g.w_shape[3]), np.float32),
                         g.dtype)
        if call.needs_dx:
            def fn(x, w, dy):
                y, pull = jax.vjp(lambda a, b: kernels.conv2d(a, b, **kw), x, w)
                return (y, *pull(dy))
        else:
            def fn(x, w, dy):
                y, pull = jax.vjp(lambda b: kernels.conv2d(x, b, **kw), w)
                return (y, *pull(dy))
        args = (x, w, dy)
    return kernels.jit(fn, low_precision=_low(g.dtype)).lower(*args).compile(), args


def model_program(model, input_shape, *, train: bool, dtype) -> tuple[Callable, tuple]:
    """``(compiled function, arguments)``: the model's inference, or a train step: forward,
    backward (the gradients of the summed outputs) and an SGD update, returning the new
    params and BatchNorm state (what XLA fuses around the weight gradients is the trainer's)."""
    variables = model.init(jax.random.key(0), tuple(input_shape))
    x = jnp.asarray(np.random.default_rng(0).standard_normal(input_shape, np.float32), dtype)
    params = variables["params"]   # float32 master weights, as the trainer keeps them
    state, rng = variables["state"], jax.random.key(1)
    if not train:
        return kernels.jit(lambda p, s, x: model.apply(p, s, x)[0], low_precision=_low(dtype)
                           ).lower(params, state, x).compile(), (params, state, x)

    def step(p, s, x, rng):
        def loss(p):
            y, new = model.apply(p, s, x, train=True, rng=rng)
            return sum(jnp.sum(v.astype(jnp.float32)) for v in jax.tree_util.tree_leaves(y)), new
        grads, new_state = jax.grad(loss, has_aux=True)(p)
        return jax.tree_util.tree_map(lambda a, g: a - 1e-3 * g, p, grads), new_state
    return kernels.jit(step, low_precision=_low(dtype)).lower(params, state, x, rng).compile(), \
        (params, state, x, rng)


def _low(dtype) -> bool:
    return jnp.dtype(dtype) != jnp.float32


#: A repetition of a call shorter than this starts with one untimed call: the first call
#: after another program ran pays for the caches and threads that program left cold (about
#: 5 ms on a 10 ms LeNet-5 train step on a 2-core AMD EPYC), a cost of the interleaving, not
#: of either program; it is under 1% of a call this long.
SETTLE_BELOW_S = 0.5


def interleave(calls: dict, rounds: int, min_rep_s: float, *, warmup: int = 1,
               settle_below_s: float = SETTLE_BELOW_S, block: Callable = jax.block_until_ready,
               clock: Callable[[], float] = time.perf_counter) -> dict:
    """Seconds per call of each ``name -> call()``, round by round, the order rotating each
    round, so that a change of the machine's speed hits every call alike.

    Each call runs ``warmup`` times untimed, then is timed (the faster of two calls where
    the first is short): that time, not the first call's (which may compile or fault in
    memory), sets ``calls``, how many calls make a repetition of about ``min_rep_s`` (one
    when 0). A repetition of a call shorter than
    ``settle_below_s`` starts with one untimed call (:data:`SETTLE_BELOW_S`). ``block``
    waits for a result; only the last of a repetition's calls is waited for, as in a loop.
    With ``min_rep_s`` and ``settle_below_s`` both 0 nothing is timed before the rounds.
    Returns ``dict(times={name: [seconds per call, per round]}, calls={name: calls},
    settled={name: bool})``."""
    reps, settle = {}, {}
    for name, call in calls.items():
        for _ in range(warmup):
            block(call())
        reps[name], settle[name] = 1, False
        if min_rep_s > 0 or settle_below_s > 0:
            per = float("inf")
            for _ in range(2):   # the faster of two: one slow call must not shorten the reps
                t0 = clock()
                block(call())
                per = min(per, max(clock() - t0, 1e-6))
                if per >= max(min_rep_s, settle_below_s):
                    break
            reps[name] = max(1, int(min_rep_s / per))
            settle[name] = per < settle_below_s
    names = list(calls)
    times = {n: [] for n in names}
    for k in range(rounds):
        for n in names[k % len(names):] + names[:k % len(names)]:
            if settle[n]:
                block(calls[n]())
            t0 = clock()
            for _ in range(reps[n]):
                res = calls[n]()
            block(res)
            times[n].append((clock() - t0) / reps[n])
    return dict(times=times, calls=reps, settled=settle)


def interleaved(programs: dict, rounds: int, min_rep_s: float = 0.05) -> dict:
    """Seconds per call of each ``name -> (fn, args)`` (:func:`interleave`), per round."""
    return interleave({name: (lambda fn=fn, args=args: fn(*args))
                       for name, (fn, args) in programs.items()}, rounds, min_rep_s)["times"]


def summarise(times: dict) -> dict:
    """``{name: (median, min, max)}`` seconds."""
    return {n: (statistics.median(t), min(t), max(t)) for n, t in times.items()}


def paired_ratio(times: dict, a: str, b: str) -> float:
    """The median over rounds of ``a``'s time / ``b``'s in the same round: a drift of the
    machine's speed between rounds cancels."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))
