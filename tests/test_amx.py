"""The bfloat16 convolution on AMX tiles (zoo.kernels.native.amx_conv): XLA's values for
every geometry it takes, the same bits on every call, chosen by the policy for bfloat16
convs exactly where the CPU has the tiles, with XLA's gradients. Every test asserts both
sides: on a CPU without the tiles, the kernel refuses with the reason and the programs hold
no call to it, with the same values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from conftest import normal
from zoo.kernels import ConvGeometry, ConvPolicy, conv2d, native
from zoo.kernels.policy import candidates

HERE = native.amx_here()


def tiles(f, *args):
    """``f(*args)`` where the CPU has the tiles; elsewhere None, after checking that the
    kernel refuses and says why."""
    if HERE:
        return f(*args)
    with pytest.raises(native.NativeUnavailable, match="AMX"):
        f(*args)
    return None


def bf16(key, shape, scale=1.0):
    return (normal(key, shape) * scale).astype(jnp.bfloat16)


def xla_reference(x, w, stride, padding, rounding):
    """XLA's convolution of the same bfloat16 values, accumulated in float32."""
    return conv2d(x.astype(jnp.float32), w.astype(jnp.float32), stride=stride,
                  padding=padding, rounding=rounding, impl="xla")


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, rounding", [
    ((2, 9, 9, 64), (3, 3, 64, 48), 1, 1, "exact"),       # 32 + 16 channels; a map under 16
    ((1, 40, 37, 512), (3, 3, 512, 32), 1, 1, "exact"),   # several bands; a last tile overlapping
    ((2, 17, 17, 3), (7, 7, 3, 64), 2, 3, "floor"),       # a stem: chunks past the 21-value window
    ((2, 13, 13, 64), (1, 1, 64, 80), 2, 0, "exact"),     # pointwise, strided; 80 = 64 + 16
    ((1, 20, 21, 5), (5, 3, 5, 20), (2, 1), (2, 1), "floor"),   # asymmetric; an unread border
])
def test_equals_xlas_convolution(x_shape, w_shape, stride, padding, rounding):
    x, w = bf16(0, x_shape), bf16(1, w_shape, 0.1)
    want = xla_reference(x, w, stride, padding, rounding)
    pads = zoo.kernels.padding_pairs(x_shape, w_shape[:2], zoo.kernels.pair(stride),
                                     zoo.kernels.pair(padding), (1, 1), want.shape[1:3])
    got = tiles(jax.jit(native.amx_conv, static_argnums=(2, 3, 4)),
                x, w, zoo.kernels.pair(stride), tuple(map(tuple, pads)), tuple(want.shape[1:3]))
    if got is None:
        return
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    err = np.abs(np.asarray(got, np.float32) - np.asarray(want))
    scale = float(jnp.max(jnp.abs(want)))
    # one rounding to bfloat16 (2^-9 of a value) and float32 sums in another order
    assert err.max() <= 5e-3 * scale, err.max() / scale
    assert err.mean() <= 1e-3 * scale, err.mean() / scale


def test_the_same_bits_on_every_call():
    x, w = bf16(2, (4, 24, 24, 64)), bf16(3, (3, 3, 64, 64), 0.1)
    f = jax.jit(lambda x, w: native.amx_conv(x, w, (1, 1), ((1, 1), (1, 1)), (24, 24)))
    first = tiles(f, x, w)
    if first is None:
        return
    first = np.asarray(first)
    for _ in range(5):
        np.testing.assert_array_equal(np.asarray(f(x, w)), first)


def amx_calls(policy, dtype):
    model = zoo.create("resnet18", num_classes=10, conv_policy=policy)
    v = model.init(jax.random.key(0), (2, 32, 32, 3))
    params = jax.tree.map(lambda a: a.astype(dtype), v["params"])
    x = jnp.zeros((2, 32, 32, 3), dtype)
    text = jax.jit(lambda p, x: model.apply(p, v["state"], x)[0]).lower(params, x).as_text()
    return text.count("zoo_amx_conv")


def test_policy_gives_bfloat16_convs_to_the_tiles_exactly_where_the_cpu_has_them():
    assert amx_calls(ConvPolicy(), jnp.bfloat16) == 20 * HERE
    assert amx_calls(ConvPolicy(), jnp.float32) == 0
    assert amx_calls(ConvPolicy(native=False), jnp.bfloat16) == 0
    assert amx_calls(ConvPolicy.xla(), jnp.bfloat16) == 0


def test_gradients_through_the_tiles_are_xlas():
    """Two convs and a ReLU in bfloat16: the forwards and the stride-1 input gradient on the
    tiles, the rest XLA's, as close to float32's as XLA's own bfloat16 convs are."""
    x, w1, w2, t = (bf16(4, (2, 13, 13, 32)), bf16(5, (3, 3, 32, 32), 0.1),
                    bf16(6, (3, 3, 32, 16), 0.1), normal(7, (2, 7, 7, 16)))

    def loss(x, w1, w2, policy):
        h = jax.nn.relu(conv2d(x, w1, padding=1, policy=policy))
        y = conv2d(h, w2, stride=2, padding=1, policy=policy)
        return jnp.sum(jnp.tanh(y.astype(jnp.float32)) * t)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    f32 = [a.astype(jnp.float32) for a in (x, w1, w2)]
    truth = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)(*f32, ConvPolicy.xla())
    lowered = jax.jit(grad, static_argnums=3).lower(x, w1, w2, ConvPolicy()).as_text()
    assert lowered.count("zoo_amx_conv") == 3 * HERE   # two forwards, the stride-1 dx
    for name, tiles, xla, want in zip(("x", "w1", "w2"), grad(x, w1, w2, ConvPolicy()),
                                      grad(x, w1, w2, ConvPolicy(native=False)), truth):
        assert tiles.shape == want.shape and tiles.dtype == jnp.bfloat16, name
        err_tiles = float(jnp.max(jnp.abs(tiles.astype(jnp.float32) - want)))
        err_xla = float(jnp.max(jnp.abs(xla.astype(jnp.float32) - want)))
        scale = float(jnp.max(jnp.abs(want)))
        assert err_tiles <= 2e-2 * scale and err_tiles <= 2 * err_xla + 1e-3 * scale, (
            name, err_tiles / scale, err_xla / scale)


def test_bfloat16_resnet_logits_on_the_tiles_are_xlas():
    models = [zoo.create("resnet18", num_classes=10, conv_policy=ConvPolicy(native=p))
              for p in (True, False)]
    v = models[0].init(jax.random.key(0), (2, 32, 32, 3))
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), v["params"])
    x = bf16(8, (2, 32, 32, 3))
    tiles, xla = (jax.jit(lambda p, x, m=m: m.apply(p, v["state"], x)[0])(params, x)
                  for m in models)
    truth = jax.jit(lambda p, x: models[1].apply(p, v["state"], x)[0])(
        v["params"], x.astype(jnp.float32))
    scale = float(jnp.max(jnp.abs(truth)))
    err_tiles = float(jnp.max(jnp.abs(tiles.astype(jnp.float32) - truth)))
    err_xla = float(jnp.max(jnp.abs(xla.astype(jnp.float32) - truth)))
    assert err_tiles <= 0.05 * scale and err_tiles <= 2 * err_xla + 1e-3 * scale


def test_asking_for_amx_where_it_cannot_run_names_the_layer_and_why():
    x, w = normal(5, (1, 8, 8, 4)), normal(6, (3, 3, 4, 16))
    with pytest.raises(ValueError, match=r"layer 'probe'.*'amx'.*bfloat16.*float32"):
        jax.jit(lambda x, w: conv2d(x, w, padding=1, impl="amx", where="probe"))(x, w)


def test_the_rules_ask_for_the_tiles_and_a_measured_verdict_overrides_them():
    g = ConvGeometry((8, 56, 56, 64), (1, 1, 64, 256), (1, 1), (1, 1), 1, (56, 56),
                     jnp.dtype(jnp.bfloat16))
    here = native.amx_here()
    assert ("amx" in candidates(g)) == here
    assert ("amx" in candidates(g._replace(dtype=jnp.dtype(jnp.float32)))) is False
    assert ConvPolicy().choose(g) == ("amx" if here else "im2col")
    assert ConvPolicy(tuned=((g.key(), "im2col"),)).choose(g) == "im2col"
    assert ConvPolicy(native=False).choose(g) == "im2col"


def test_the_benchmark_times_inference_without_the_tiles_where_they_run():
    from zoo import bench
    model = zoo.create("resnet18", num_classes=10)
    variants = bench.lever_variants(model, "infer", (2, 32, 32, 3), "bfloat16")
    assert ("no_native" in variants) == native.amx_here()
    assert "no_native" in bench.lever_variants(model, "infer", (2, 32, 32, 3), "float32")


def test_relu_in_the_store_keeps_nan_as_xlas_max():
    """A NaN input gives NaN outputs through the folded ReLU, as XLA's max gives, never 0."""
    x, w = bf16(20, (1, 6, 6, 32)), bf16(21, (3, 3, 32, 16), 0.1)
    x = x.at[0, 3, 3, 0].set(jnp.nan)
    pads = ((1, 1), (1, 1))
    got = tiles(jax.jit(native.amx_conv, static_argnums=(2, 3, 4, 7)),
                x, w, (1, 1), pads, (6, 6), None, None, True)
    if got is None:
        return
    want = jnp.maximum(xla_reference(x, w, 1, 1, "exact"), 0)
    nan = np.isnan(np.asarray(want))
    assert 0 < nan.sum() < nan.size
    np.testing.assert_array_equal(np.isnan(np.asarray(got, np.float32)), nan)


def test_a_padding_wider_than_the_kernel_keeps_xlas_input_gradient():
    """Padding 3 on a 3x3: the input gradient as a forward conv would need a negative pad,
    so XLA's runs; values and gradients as XLA's."""
    x, w = bf16(9, (1, 6, 6, 32)), bf16(10, (3, 3, 32, 16), 0.1)

    def f(x, w, policy):
        return jnp.sum(jnp.tanh(conv2d(x, w, padding=3, policy=policy).astype(jnp.float32)))

    grad = jax.jit(jax.grad(f, argnums=(0, 1)), static_argnums=2)
    lowered = jax.jit(grad, static_argnums=2).lower(x, w, ConvPolicy()).as_text()
    assert lowered.count("zoo_amx_conv") == HERE   # the forward only
    for a, b in zip(grad(x, w, ConvPolicy()), grad(x, w, ConvPolicy(native=False))):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.max(np.abs(a - b)) <= 0.03 * np.max(np.abs(b))


def resnet_pair():
    models = [zoo.create("resnet18", num_classes=10, conv_policy=ConvPolicy(native=p))
              for p in (True, False)]
    v = models[0].init(jax.random.key(0), (2, 32, 32, 3))
    v = dict(v, state=jax.tree.map(lambda a: a + 0.1 * jnp.abs(normal(11, a.shape)), v["state"]))
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), v["params"])
    return models, v, params


def test_batchnorm_and_relu_fold_into_the_tiles_in_inference():
    """conv-BN-ReLU in inference is one call: the BatchNorm's and ReLU's passes are gone from
    the program, the values are the unfolded ones within bfloat16 rounding."""
    models, v, params = resnet_pair()
    x = bf16(12, (2, 32, 32, 3))
    f = [jax.jit(lambda p, x, m=m: m.apply(p, v["state"], x)[0]) for m in models]
    text, unfolded = (g.lower(params, x).as_text() for g in f)
    # one multiply of an activation by its scale per BatchNorm, gone in all 20
    assert unfolded.count("stablehlo.multiply") - text.count("stablehlo.multiply") == 20 * HERE
    assert text.count("zoo_amx_conv") == 20 * HERE
    truth = jax.jit(lambda p, x: models[1].apply(p, v["state"], x)[0])(
        v["params"], x.astype(jnp.float32))
    scale = float(jnp.max(jnp.abs(truth)))
    err = [float(jnp.max(jnp.abs(g(params, x).astype(jnp.float32) - truth))) for g in f]
    assert err[0] <= 0.05 * scale and err[0] <= 2 * err[1] + 1e-3 * scale, (err, scale)


def test_an_asked_for_activation_keeps_its_layers_unfolded():
    models, v, params = resnet_pair()
    x = bf16(13, (2, 32, 32, 3))
    asked = ("conv1", "bn1", "relu")   # the stem: conv, BatchNorm, ReLU
    got = [jax.jit(lambda p, x, m=m: m.apply(p, v["state"], x, capture=asked))(params, x)
           for m in models]
    for path in asked:
        a, b = (np.asarray(g[2][path], np.float32) for g in got)
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0.02, atol=0.02 * np.max(np.abs(b)))


def test_gradients_through_folded_layers_are_the_unfolded_ones():
    """Inference-mode gradients (a perceptual loss) through conv-BN-ReLU on the tiles: as
    close to float32's as the unfolded bfloat16 program's."""
    models, v, params = resnet_pair()
    x = bf16(14, (2, 32, 32, 3))

    def loss(p, x, m):
        return jnp.sum(jnp.tanh(m.apply(p, v["state"], x)[0].astype(jnp.float32)))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    folded, unfolded = (grad(params, x, m) for m in models)
    truth = grad(v["params"], x.astype(jnp.float32), models[1].with_policy(ConvPolicy.xla()))

    def cos(a, b):
        a, b = np.asarray(a, np.float32).ravel(), np.asarray(b, np.float32).ravel()
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))

    for a, b, t in zip(*(jax.tree.leaves(g) for g in (folded, unfolded, truth))):
        assert np.all(np.isfinite(np.asarray(a, np.float32)))
        assert cos(a, t) >= cos(b, t) - 0.02, (a.shape, cos(a, t), cos(b, t))
