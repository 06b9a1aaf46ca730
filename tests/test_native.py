"""zoo's compiled weight-gradient kernel: XLA's values for every geometry it takes, chosen by
the policy where it should be, built once and atomically, and a clear fallback where no
compiler is at hand."""
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from conftest import normal
from zoo.kernels import ConvGeometry, ConvPolicy, conv2d, native


def test_the_kernels_build_here():
    """A C++ compiler is part of the test environment (CI has one): the kernels must build."""
    assert native.available(), native.why_not()

EVERYWHERE = ConvPolicy(native_grad_min_map=1)
NEVER = ConvPolicy(native_grad_min_map=0)


def xla_weight_grad(x, dy, w_shape, stride, padding, rounding):
    def f(w):
        return conv2d(x, w, stride=stride, padding=padding, rounding=rounding, impl="xla")
    return jax.vjp(f, jnp.zeros(w_shape))[1](dy)[0]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, rounding", [
    ((2, 30, 30, 3), (7, 7, 3, 20), 2, 3, "floor"),     # a stem: 3 channels, 20 = 16 + 4 padded
    ((3, 12, 12, 8), (3, 3, 8, 32), 1, 1, "exact"),     # two vectors of output channels
    ((1, 9, 9, 4), (3, 3, 4, 80), 2, 0, "exact"),       # one image, 64 + 16 channels
    ((2, 4, 4, 8), (3, 3, 8, 320), 1, 1, "exact"),      # a small map: parts of 2, 2, 1 blocks
    ((2, 20, 21, 5), (5, 3, 5, 6), (2, 1), (2, 1), "floor"),   # asymmetric; an unread border
    ((3, 7, 9, 16), (3, 3, 16, 16), 1, 3, "exact"),   # windows of zeros only; chunks span images
])
def test_equals_xlas_weight_gradient(x_shape, w_shape, stride, padding, rounding):
    x = normal(0, x_shape)
    y = jax.eval_shape(lambda: conv2d(x, jnp.zeros(w_shape), stride=stride, padding=padding,
                                      rounding=rounding, impl="xla"))
    dy = normal(1, y.shape)
    pads = zoo.kernels.padding_pairs(x_shape, w_shape[:2], zoo.kernels.pair(stride),
                                     zoo.kernels.pair(padding), (1, 1), y.shape[1:3])
    got = jax.jit(native.weight_grad, static_argnums=(2, 3, 4))(
        x, dy, w_shape[:2], zoo.kernels.pair(stride), tuple(map(tuple, pads)))
    want = xla_weight_grad(x, dy, w_shape, stride, padding, rounding)
    assert got.shape == want.shape == w_shape
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-6 * scale)


def test_the_same_bits_on_every_call():
    """Threads take the rows in any order, but each fixed part of them is summed in order:
    a resumed training run must repeat the uninterrupted one bit for bit."""
    x, dy = normal(7, (4, 24, 24, 16)), normal(8, (4, 24, 24, 32))
    f = jax.jit(native.weight_grad, static_argnums=(2, 3, 4))
    first = np.asarray(f(x, dy, (3, 3), (1, 1), ((1, 1), (1, 1))))
    for _ in range(8):
        np.testing.assert_array_equal(np.asarray(f(x, dy, (3, 3), (1, 1), ((1, 1), (1, 1)))),
                                      first)


def test_policy_gives_it_the_custom_convs_of_big_float32_maps_in_train_steps():
    def lowered(policy, x_shape, w_shape, dtype=jnp.float32, groups=1, impl=None):
        x, w = jnp.zeros(x_shape, dtype), jnp.zeros(w_shape, dtype)
        def loss(w, x):   # x traced too: an eager input takes XLA's conv
            y = conv2d(x, w, padding=1, groups=groups, policy=policy, impl=impl, train=True)
            return jnp.sum(y.astype(jnp.float32))
        return jax.jit(jax.grad(loss)).lower(w, x).as_text()

    big, small = ((2, 20, 20, 8), (3, 3, 8, 16)), ((2, 19, 19, 8), (3, 3, 8, 16))
    assert native.TARGET in lowered(ConvPolicy(), *big)           # 400 output pixels
    assert native.TARGET not in lowered(ConvPolicy(), *small)     # 361
    assert native.TARGET not in lowered(NEVER, *big)
    assert native.TARGET not in lowered(ConvPolicy(), *big, impl="xla")   # autodiff's own
    assert native.TARGET not in lowered(ConvPolicy(), *big, dtype=jnp.bfloat16)
    assert native.TARGET not in lowered(ConvPolicy(), (2, 20, 20, 8), (3, 3, 4, 16), groups=2)
    g = ConvGeometry((2, 20, 20, 8), (3, 3, 8, 16), (1, 1), (2, 2), 1, (16, 16))
    assert not ConvPolicy().native_grad(g)                         # dilated
    def strided(hw):
        return ConvGeometry((2, hw, hw, 8), (3, 3, 8, 16), (2, 2), (1, 1), 1, (hw // 2, hw // 2))
    assert ConvPolicy().native_grad(strided(28))                   # 196 out, 784 in
    assert not ConvPolicy().native_grad(strided(14))               # 49 out, 196 in
    # Winograd's 28x28 layers take the compiled forward and gradients in a train step only
    p = ConvPolicy()
    g28 = ConvGeometry((32, 28, 28, 128), (3, 3, 128, 128), (1, 1), (1, 1), 1, (28, 28))
    g14 = ConvGeometry((32, 14, 14, 256), (3, 3, 256, 256), (1, 1), (1, 1), 1, (14, 14))
    assert (p.rule(g28), p.rule(g28, train=True)) == ("winograd", "xla+stored")
    assert (p.rule(g14), p.rule(g14, train=True)) == ("winograd", "winograd")
    with pytest.raises(ValueError, match="native_grad_min_map"):
        ConvPolicy(native_grad_min_map=-1)


def test_a_train_step_has_xlas_gradients_and_runs_under_vmap():
    model = zoo.create("lenet5")
    x, y = normal(2, (4, 32, 32, 1)), jnp.arange(4) % 10
    v = model.init(jax.random.key(0), x.shape)

    def grads(policy):
        m = model.with_policy(policy)
        def loss(p, x):
            logits = m.apply(p, v["state"], x, train=True)[0]
            return jnp.mean(zoo.train.cross_entropy(logits, y))
        step = jax.jit(jax.grad(loss))
        return step(v["params"], x), step.lower(v["params"], x).as_text().count(native.TARGET)

    (got, calls), (want, none) = grads(EVERYWHERE), grads(NEVER)
    assert (calls, none) == (2, 0)                      # conv1 (taps forward) and conv2
    for path, a in zoo.paths.flatten(got).items():
        b = zoo.paths.flatten(want)[path]
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                                   atol=1e-5 * float(jnp.max(jnp.abs(b))) + 1e-7, err_msg=path)
    # per-example gradients: the custom call runs once per example
    x1, w = normal(3, (3, 6, 6, 2)), normal(4, (3, 3, 2, 16))
    def per_example(xi):
        return jax.grad(lambda w_: jnp.sum(conv2d(xi[None], w_, padding=1, impl="xla+stored",
                                                  policy=EVERYWHERE) ** 2))(w)
    got = jax.jit(jax.vmap(per_example))(x1)
    want = jnp.stack([jax.grad(lambda w_: jnp.sum(conv2d(xi[None], w_, padding=1,
                                                         impl="xla") ** 2))(w) for xi in x1])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_built_once_per_machine_and_atomically(tmp_path, monkeypatch):
    assert native.available()                        # builds it, or finds it built
    cxx = native.compiler()
    out = native.library_path(cxx)
    assert os.path.exists(out)
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    moved = native.library_path(cxx)
    assert moved.startswith(str(tmp_path)) and os.path.basename(moved) == os.path.basename(out)
    # a compiler that fails leaves nothing behind and says what failed
    with pytest.raises(native.NativeUnavailable, match="failed"):
        native.build("false", moved)
    assert not os.path.exists(moved) and os.listdir(os.path.dirname(moved)) == []
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(native.NativeUnavailable, match="CXX"):
        native.compiler()


def test_without_a_compiler_convs_keep_xlas_gradient_and_say_so_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_warned", [])
    native._load.cache_clear()
    try:
        assert not native.available() and "no-such-compiler" in native.why_not()
        x, w = normal(5, (2, 20, 20, 4)), normal(6, (3, 3, 4, 16))
        def grad(policy):
            return jax.grad(lambda w_, x_: jnp.sum(conv2d(x_, w_, padding=1, policy=policy,
                                                          train=True) ** 2))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = jax.jit(grad(ConvPolicy()))(w, x)
            jax.jit(grad(ConvPolicy(small_map=15)))(w, x)   # another program: no second warning
        said = [str(c.message) for c in caught if "compiled CPU kernels" in str(c.message)]
        assert len(said) == 1 and "no-such-compiler" in said[0]
        assert not os.listdir(tmp_path)                  # nothing built, nothing half-written
        want = jax.grad(lambda w_: jnp.sum(conv2d(x, w_, padding=1, impl="xla") ** 2))(w)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)
    finally:
        monkeypatch.undo()
        native._load.cache_clear()
        assert native.available()                        # registered again in this process


@pytest.mark.parametrize("shape", [(4, 18, 18, 64), (3, 7, 5, 20), (600, 24)])
def test_batch_norm_sums_equal_float64(shape):
    """Off-centre data (mean 3, std 2) over 1,296, 105 and 600 rows; 20 and 24 channels are
    not whole vectors."""
    x = normal(9, shape) * 2 + 3
    g = normal(10, shape)
    xd = np.asarray(x, np.float64).reshape(-1, shape[-1])
    gd = np.asarray(g, np.float64).reshape(-1, shape[-1])
    mean, var = jax.jit(native.batch_stats)(x)
    np.testing.assert_allclose(np.asarray(mean), xd.mean(0), rtol=0, atol=2e-6 * 3)
    np.testing.assert_allclose(np.asarray(var), xd.var(0), rtol=2e-6, atol=0)
    sum_g, sum_gc = jax.jit(native.grad_sums)(g, x, mean)
    np.testing.assert_allclose(np.asarray(sum_g), gd.sum(0), rtol=0, atol=1e-5 * len(gd) ** .5)
    want = (gd * (xd - np.asarray(mean, np.float64))).sum(0)
    np.testing.assert_allclose(np.asarray(sum_gc), want, rtol=0, atol=2e-5 * len(gd) ** .5)
    again = jax.jit(native.grad_sums)(g, x, mean)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, (sum_g, sum_gc)))


def test_batch_norm_layer_takes_the_compiled_sums_with_the_same_values_and_gradients():
    layer = zoo.nn.BatchNorm()
    _, params, state = layer.init(jax.random.key(0), (8, 10, 10, 32))
    params = {"scale": jnp.linspace(0.5, 1.5, 32), "bias": jnp.linspace(-1, 1, 32)}
    x, g = normal(11, (8, 10, 10, 32)) * 2 + 3, normal(12, (8, 10, 10, 32))

    def run(policy):
        def f(p, x):
            y, new = layer.apply(p, state, x, train=True, policy=policy)
            return jnp.sum(y * g), new
        step = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
        return step(params, x), step.lower(params, x).as_text()

    ((loss, new), grads), text = run(ConvPolicy())
    ((loss0, new0), grads0), text0 = run(ConvPolicy(native=False))
    assert "zoo_batch_stats" in text and "zoo_grad_sums" in text
    assert "zoo_batch_stats" not in text0 and "zoo_grad_sums" not in text0
    np.testing.assert_allclose(float(loss), float(loss0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves((new, grads)), jax.tree.leaves((new0, grads0))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                   atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("shape, window, stride, padding, rounding", [
    ((2, 17, 17, 32), 3, 2, 1, "exact"),      # a ResNet stem's pool, odd map
    ((2, 9, 8, 32), 3, 1, 1, "exact"),        # an Inception branch's, stride 1
    ((2, 13, 13, 16), 3, 2, 0, "ceil"),       # GoogLeNet's, the ceil rule's border
])
def test_max_pool_forward_equals_xlas_in_inference_and_train(shape, window, stride, padding,
                                                             rounding):
    """The compiled pool gives XLA's values, NaN included, in inference and in a train step;
    bfloat16, channels not in vectors of 16 and ConvPolicy(native=False) keep XLA's forms."""
    pool = zoo.nn.MaxPool(window, stride, padding, rounding)
    x = normal(18, shape).at[0, 1, 1, 3].set(jnp.nan)

    def run(policy, train, x=x):
        f = jax.jit(lambda x_: pool.apply({}, {}, x_, train=train, policy=policy)[0])
        return f(x), f.lower(x).as_text()

    want, plain = run(ConvPolicy(native=False), False)
    assert "zoo_max_pool" not in plain
    assert bool(jnp.isnan(want[0]).any()) and not bool(jnp.isnan(want[1]).any())
    for train in (False, True):
        got, text = run(ConvPolicy(), train)
        assert "@zoo_max_pool(" in text
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    _, bf16 = run(ConvPolicy(), False, x.astype(jnp.bfloat16))
    assert "zoo_max_pool" not in bf16
    tail, text = run(ConvPolicy(), False, x[..., :12])   # channels not in vectors of 16
    assert "zoo_max_pool" not in text
    np.testing.assert_array_equal(np.asarray(tail), np.asarray(want[..., :12]))


@pytest.mark.parametrize("shape, window, stride, padding, rounding", [
    ((2, 17, 17, 32), 3, 2, 1, "exact"),      # a ResNet stem's pool, odd map
    ((3, 9, 8, 20), 2, 2, 0, "floor"),        # VGG's, an unreached row; 20 channels: a tail
    ((2, 12, 12, 16), 3, 2, 0, "ceil"),       # GoogLeNet's, the ceil rule's border
])
def test_max_pool_gradient_routes_as_the_xla_form(shape, window, stride, padding, rounding):
    """Ties (values on a 0.25 grid) go to the first maximum in row-major window order."""
    pool = zoo.nn.MaxPool(window, stride, padding, rounding)
    out_shape, _, _ = pool.init(jax.random.key(0), shape)
    x = jnp.round(normal(13, shape) * 4) / 4
    g = normal(14, out_shape)

    def grad(policy):
        def run(x):
            def f(x_):
                return pool.apply({}, {}, x_, train=True, policy=policy)[0]
            return jax.vjp(f, x)[1](g)[0]
        step = jax.jit(run)
        return step(x), step.lower(x).as_text()

    got, text = grad(ConvPolicy())
    want, text0 = grad(ConvPolicy(native=False))
    assert "zoo_max_pool_grad" in text and "zoo_max_pool_grad" not in text0
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)
    assert float(jnp.sum(jnp.abs(got) > 0)) > 0
    bf16 = jax.jit(lambda x: jax.vjp(lambda x_: pool.apply({}, {}, x_, train=True)[0], x)[1](
        g.astype(jnp.bfloat16))[0]).lower(x.astype(jnp.bfloat16)).as_text()
    assert "zoo_max_pool_grad" not in bf16           # float32 only


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, rounding", [
    ((2, 30, 30, 3), (7, 7, 3, 64), 2, 3, "floor"),     # a stem
    ((2, 21, 20, 5), (5, 3, 5, 20), (1, 1), (2, 1), "floor"),   # asymmetric; 20 = 16 + 4
    ((1, 31, 31, 3), (11, 11, 3, 80), 4, 2, "floor"),   # AlexNet's stride; 64 + 16 channels
    # padding wider than the kernel: whole rows and tiles in it, tiles over both edges, and an
    # input gradient whose own padding is negative
    ((1, 4, 5, 8), (3, 3, 8, 16), 1, 3, "exact"),
    # small maps: tiles over row and image ends; 144 = 2 * 64 + 16 channels in packed blocks,
    # and a kernel whose blocks exceed a part's share of W (one block per part)
    ((3, 5, 5, 24), (3, 3, 24, 144), 1, 1, "exact"),
    ((2, 3, 3, 512), (3, 3, 512, 80), 1, 1, "exact"),
])
def test_forward_and_input_gradient_equal_xlas(x_shape, w_shape, stride, padding, rounding):
    x, w = normal(15, x_shape), normal(16, w_shape) * 0.1
    stride, padding = zoo.kernels.pair(stride), zoo.kernels.pair(padding)
    want = conv2d(x, w, stride=stride, padding=padding, rounding=rounding, impl="xla")
    pads = tuple(map(tuple, zoo.kernels.padding_pairs(x_shape, w_shape[:2], stride, padding,
                                                      (1, 1), want.shape[1:3])))
    got = jax.jit(native.conv, static_argnums=(2, 3, 4))(x, w, stride, pads, want.shape[1:3])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                               atol=2e-6 * float(jnp.max(jnp.abs(want))))
    # the per-channel terms in the store: y * scale + shift, then ReLU keeping NaN
    scale, shift = normal(18, w_shape[3:]), normal(19, w_shape[3:])
    x_nan = x.at[0, x_shape[1] // 2, x_shape[2] // 2, 0].set(jnp.nan)
    got = jax.jit(native.conv, static_argnums=(2, 3, 4, 7))(x_nan, w, stride, pads,
                                                           want.shape[1:3], scale, shift, True)
    ref = jnp.maximum(conv2d(x_nan, w, stride=stride, padding=padding, rounding=rounding,
                             impl="xla") * scale + shift, 0)
    assert 0 < int(jnp.sum(jnp.isnan(ref))) < ref.size
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=0,
                               atol=4e-6 * float(jnp.nanmax(jnp.abs(ref))))
    if stride == (1, 1):
        dy = normal(17, want.shape)
        dx = jax.jit(native.input_grad, static_argnums=(2, 3))(dy, w, pads, x_shape[1:3])
        ref = jax.vjp(lambda x_: conv2d(x_, w, stride=stride, padding=padding,
                                        rounding=rounding, impl="xla"), x)[1](dy)[0]
        np.testing.assert_allclose(np.asarray(dx), np.asarray(ref), rtol=0,
                                   atol=2e-6 * float(jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, pool", [
    ((2, 30, 30, 3), (7, 7, 3, 64), 2, 3, (3, 2, 1, "floor")),      # ResNet's stem
    ((3, 13, 13, 24), (3, 3, 24, 80), 1, 1, (3, 2, 0, "exact")),    # AlexNet's conv5, 80 ch
    ((1, 27, 27, 16), (5, 5, 16, 32), 1, 2, (3, 2, 0, "ceil")),     # a border no window reads
    ((1, 40, 40, 8), (3, 3, 8, 144), 1, 1, (2, 2, 0, "exact")),     # steps and three blocks
])
def test_pooled_forward_equals_the_conv_then_xlas_max_pool(x_shape, w_shape, stride, padding,
                                                           pool):
    x, w = normal(21, x_shape), normal(22, w_shape) * 0.1
    x = x.at[0, x_shape[1] // 2, x_shape[2] // 2, 0].set(jnp.nan)
    scale, shift = normal(23, w_shape[3:]), normal(24, w_shape[3:])
    stride, padding = zoo.kernels.pair(stride), zoo.kernels.pair(padding)
    z = conv2d(x, w, stride=stride, padding=padding, rounding="floor", impl="xla")
    z = jnp.maximum(z * scale + shift, 0)
    geom = zoo.kernels.pool_geometry(z.shape[1:3], *pool)
    want = jax.lax.reduce_window(z[:, :geom.keep_hw[0], :geom.keep_hw[1]], -jnp.inf,
                                 jax.lax.max, (1, *geom.window, 1), (1, *geom.strides, 1),
                                 ((0, 0), *geom.pads, (0, 0)))
    pads = tuple(map(tuple, zoo.kernels.padding_pairs(x_shape, w_shape[:2], stride, padding,
                                                      (1, 1), z.shape[1:3])))
    got = jax.jit(native.pooled_conv, static_argnums=(2, 3, 4, 7, 8))(
        x, w, stride, pads, z.shape[1:3], scale, shift, True,
        (geom.window, geom.strides, geom.top_left, geom.out_hw))
    assert got.shape == want.shape and 0 < int(jnp.sum(jnp.isnan(want))) < want.size
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0,
                               atol=4e-6 * float(jnp.nanmax(jnp.abs(want))))


def test_policy_gives_the_compiled_forward_to_image_convs_and_maps_up_to_its_cap():
    p = ConvPolicy()
    def g(x, w, out, stride=(1, 1), dtype=jnp.float32, dilation=(1, 1), groups=1):
        return ConvGeometry(x, w, stride, dilation, groups, out, dtype)
    assert p.native_forward(g((8, 224, 224, 3), (7, 7, 3, 64), (112, 112), (2, 2)))   # stems
    assert p.native_forward(g((8, 224, 224, 3), (3, 3, 3, 64), (224, 224)))   # any map
    assert p.native_forward(g((8, 56, 56, 64), (3, 3, 64, 64), (56, 56)))
    assert p.native_forward(g((8, 112, 112, 64), (3, 3, 64, 64), (112, 112)))
    assert p.native_forward(g((8, 56, 56, 64), (3, 3, 64, 192), (56, 56)))    # wide
    assert p.native_forward(g((8, 7, 7, 512), (3, 3, 512, 512), (7, 7)))      # small map
    assert p.native_forward(g((8, 14, 14, 256), (3, 3, 256, 512), (7, 7), (2, 2)))
    assert not p.native_forward(g((8, 224, 224, 64), (3, 3, 64, 64), (224, 224)))  # VGG's
    assert not p.native_forward(g((8, 56, 56, 64), (3, 3, 64, 64), (56, 56), dtype=jnp.bfloat16))
    assert not p.native_forward(g((8, 14, 14, 64), (3, 3, 64, 64), (14, 14), dilation=(2, 2)))
    assert not p.native_forward(g((8, 14, 14, 64), (3, 3, 32, 64), (14, 14), groups=2))
    assert not p.for_loop_body().native_forward(g((8, 56, 56, 64), (3, 3, 64, 64), (56, 56)))
    for off in (p.replace(native_forward_max_map=0), p.replace(native=False), ConvPolicy.xla()):
        assert not off.native_forward(g((8, 224, 224, 3), (7, 7, 3, 64), (112, 112), (2, 2)))
    # in a model: ResNet-18's stem and layer1 at 224 (forward and, at stride 1, dx)
    m = zoo.create("resnet18", num_classes=10)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    v = m.abstract_init((2, 224, 224, 3))[0]
    text = jax.jit(lambda p, s, x: m.apply(p, s, x)[0]).lower(v["params"], v["state"], x).as_text()
    # the stem and layer1, then the strided 3x3s and the small maps XLA's forward would take;
    # layer2's 28x28 maps take Winograd, the 1x1 shortcuts a matrix product
    assert text.count("@zoo_pooled_conv(") == 1             # the stem, with its max pool
    assert text.count("@zoo_conv(") == 4 + 1 + 4 + 4         # layer1, layer2, layer3, layer4


def test_batchnorm_and_relu_fold_into_the_compiled_forward_in_inference():
    """float32 conv-BN(-ReLU)(-max pool) in inference where the conv runs the compiled
    forward: one call, each BatchNorm's pass gone, the stem's conv output never written;
    values and inference-mode gradients (a perceptual loss) as the unfolded program's."""
    models = [zoo.create("resnet18", num_classes=10, conv_policy=p)
              for p in (EVERYWHERE, ConvPolicy(native=False))]
    v = models[0].init(jax.random.key(0), (2, 32, 32, 3))
    state = jax.tree.map(lambda a: a + 0.1 * jnp.abs(normal(11, a.shape)), v["state"])
    x = normal(12, (2, 32, 32, 3))

    def loss(p, x, m):
        return jnp.sum(jnp.tanh(m.apply(p, state, x)[0]))

    logits = [jax.jit(lambda p, x, m=m: m.apply(p, state, x)[0]) for m in models]
    text, unfolded = (f.lower(v["params"], x).as_text() for f in logits)
    assert text.count("@zoo_conv(") == 4                 # layer1's four convs
    assert text.count("@zoo_pooled_conv(") == 1          # the stem, its max pool folded in
    assert "zoo_max_pool" not in text                    # no pass of its own

    # one multiply of an activation by its scale per BatchNorm, gone in those five
    assert unfolded.count("stablehlo.multiply") - text.count("stablehlo.multiply") == 5
    got, want = (np.asarray(f(v["params"], x)) for f in logits)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.max(np.abs(want)))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
    for a, b in zip(*(jax.tree.leaves(grad(v["params"], x, m)) for m in models)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0,
                                   atol=1e-4 * float(jnp.max(jnp.abs(b))) + 1e-7)
