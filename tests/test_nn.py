"""The functional core: conv implementations, geometry rules, pools, norms, combinators."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import normal
from zoo import kernels, nn
from zoo.kernels import ConvPolicy, conv as kconv

CONV_CASES = [  # (input NHWC, kernel, stride, padding, dilation, groups, rounding)
    ((2, 9, 9, 4), 3, 1, 1, 1, 1, "exact"),
    ((2, 10, 10, 6), 3, 2, 1, 1, 1, "floor"),
    ((1, 11, 11, 4), 5, 1, 2, 2, 1, "exact"),
    ((2, 12, 12, 8), 3, 1, 1, 1, 4, "exact"),
    ((1, 13, 13, 6), (3, 5), (2, 1), (1, 2), 1, 2, "floor"),
    ((2, 4, 4, 16), 1, 1, 0, 1, 1, "exact"),
    ((2, 2, 2, 8), 3, 1, 1, 1, 1, "exact"),
    ((1, 9, 9, 4), 3, 2, 0, 1, 1, "exact"),
]


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,groups,rounding", CONV_CASES)
def test_im2col_equals_xla_values_and_gradients(shape, kernel, stride, padding, dilation, groups, rounding):
    kh, kw = kernels.pair(kernel)
    cout = 8
    x = normal(0, shape)
    w = normal(1, (kh, kw, shape[3] // groups, cout))

    def run(impl, x, w):
        return kernels.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups,
                         rounding=rounding, impl=impl)

    y_xla = jax.jit(run, static_argnums=0)("xla", x, w)
    y_col = jax.jit(run, static_argnums=0)("im2col", x, w)
    assert y_xla.shape == y_col.shape
    np.testing.assert_allclose(y_col, y_xla, rtol=1e-5, atol=1e-5)
    probe = normal(2, y_xla.shape)
    loss = lambda impl: (lambda x, w: jnp.sum(run(impl, x, w) * probe))
    gx_xla, gw_xla = jax.jit(jax.grad(loss("xla"), argnums=(0, 1)))(x, w)
    gx_col, gw_col = jax.jit(jax.grad(loss("im2col"), argnums=(0, 1)))(x, w)
    np.testing.assert_allclose(gx_col, gx_xla, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw_col, gw_xla, rtol=1e-4, atol=1e-4)


def test_policy_impl_selects_implementation():
    x = jnp.ones((1, 8, 8, 2))
    w = jnp.ones((3, 3, 2, 4))
    im2col = ConvPolicy(impl="im2col")
    assert kernels.choose(jax.ShapeDtypeStruct((1, 8, 8, 2), jnp.float32), w, padding=1,
                          policy=im2col) == "xla"  # not traced: an eager call is XLA's
    traced = jax.make_jaxpr(lambda x, w: kernels.conv2d(x, w, padding=1, policy=im2col))(x, w)
    assert "conv_general_dilated" not in str(traced) and "dot_general" in str(traced)
    a = jax.jit(lambda x, w: kernels.conv2d(x, w, padding=1, policy=im2col))(x, w)
    b = kernels.conv2d(x, w, padding=1, policy=ConvPolicy.xla())
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert float(a[0, 0, 0, 0]) == 8.0 and float(a[0, 3, 3, 0]) == 18.0
    with pytest.raises(ValueError, match="impl"):
        kernels.conv2d(x, w, impl="fft")
    with pytest.raises(ValueError, match="impl must be one of"):
        ConvPolicy(impl="fft")


def test_output_size_formula_and_rules():
    assert nn.output_size(227, 11, 4, 0) == 55
    assert nn.output_size(224, 3, 1, 1) == 224
    assert nn.output_size(112, 3, 2, 0, rounding="ceil") == 56
    assert nn.output_size(112, 3, 2, 1, rounding="floor") == 56
    assert nn.output_size(7, 3, 2, 1, rounding="ceil") == 4
    # PyTorch's ceil rule drops a window that would start inside the right padding.
    assert nn.output_size(4, 2, 2, 1, rounding="ceil") == 3
    with pytest.raises(ValueError, match=r"54\.25"):
        with nn.scope("conv1"):
            nn.output_size(224, 11, 4, 0)


def test_geometry_error_names_layer_and_sizes():
    net = nn.Sequential([("conv1", nn.Conv(96, 11, stride=4)), ("relu", nn.Relu())])
    with pytest.raises(ValueError) as err:
        net.init(jax.random.key(0), (1, 224, 224, 3))
    message = str(err.value)
    for piece in ["conv1", "54.25", "W=224", "F=11", "P=0", "S=4"]:
        assert piece in message
    out, _, _ = net.init(jax.random.key(0), (1, 227, 227, 3))
    assert out == (1, 55, 55, 96)


def test_input_too_small_names_layer():
    net = nn.Sequential([("c1", nn.Conv(4, 3)), ("pool", nn.MaxPool(2)), ("c2", nn.Conv(4, 5))])
    with pytest.raises(ValueError, match="too small.*c2"):
        net.init(jax.random.key(0), (1, 8, 8, 1))


def test_pools_floor_and_ceil_shapes_and_values():
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    ceil = nn.MaxPool(2, 2, rounding="ceil")
    floor = nn.MaxPool(2, 2, rounding="floor")
    assert ceil.init(None, x.shape)[0] == (1, 3, 3, 1)
    assert floor.init(None, x.shape)[0] == (1, 2, 2, 1)
    np.testing.assert_array_equal(ceil.apply({}, {}, x)[0][0, :, :, 0],
                                  [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    np.testing.assert_array_equal(floor.apply({}, {}, x)[0][0, :, :, 0], [[6, 8], [16, 18]])
    with pytest.raises(ValueError, match="2.5"):
        nn.MaxPool(2, 2).init(None, x.shape)
    avg = nn.AvgPool(2, 2, rounding="ceil").apply({}, {}, x)[0][0, :, :, 0]
    np.testing.assert_allclose(avg[2, 2], 24.0)  # the ceil border is not counted
    np.testing.assert_allclose(avg[0, 0], (0 + 1 + 5 + 6) / 4)


def test_strided_bfloat16_pools_equal_the_reduce_window():
    """bfloat16 takes the shifted-views form at any stride: the same maxima, -inf padding."""
    x = normal(3, (2, 13, 13, 8)).astype(jnp.bfloat16)
    for window, stride, pads in [((3, 3), (2, 2), ((1, 1), (1, 1))),
                                 ((2, 2), (2, 2), ((0, 0), (0, 1)))]:
        got = jax.jit(lambda x, w=window, s=stride, p=pads: kernels.max_pool(x, w, s, p))(x)
        want = jax.lax.reduce_window(x.astype(jnp.float32), -jnp.inf, jax.lax.max,
                                     (1, *window, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0)))
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want))


def test_adaptive_and_global_pool():
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 3))
    y = nn.AdaptiveAvgPool(4).apply({}, {}, x)[0]
    assert y.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(y[:, 1, 2], jnp.mean(x[:, 3:7, 7:11], axis=(1, 2)), rtol=1e-5)
    g = nn.GlobalAvgPool().apply({}, {}, x)[0]
    np.testing.assert_allclose(g, jnp.mean(x, axis=(1, 2)), rtol=1e-6)


def test_batchnorm_train_and_eval():
    bn = nn.BatchNorm(eps=1e-5, momentum=0.1)
    _, params, state = bn.init(None, (8, 4, 4, 3))
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (8, 4, 4, 3))
    y, new_state = bn.apply(params, state, x, train=True)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, atol=1e-3)
    np.testing.assert_allclose(new_state["mean"], 0.1 * jnp.mean(x, axis=(0, 1, 2)), rtol=1e-5)
    n = 8 * 16
    np.testing.assert_allclose(new_state["var"], 0.9 + 0.1 * jnp.var(x, axis=(0, 1, 2)) * n / (n - 1),
                               rtol=1e-5)
    y_eval, same = bn.apply(params, new_state, x, train=False)
    assert same is new_state
    np.testing.assert_allclose(y_eval, (x - new_state["mean"]) / jnp.sqrt(new_state["var"] + 1e-5),
                               rtol=1e-5, atol=1e-5)


def test_dropout_needs_rng_and_scales():
    drop = nn.Dropout(0.5)
    x = jnp.ones((1000,))
    with pytest.raises(ValueError, match="rng"):
        drop.apply({}, {}, x, train=True)
    y = drop.apply({}, {}, x, train=True, rng=jax.random.key(0))[0]
    assert set(np.unique(np.asarray(y))) <= {0.0, 2.0}
    assert 400 < int(jnp.sum(y == 0)) < 600
    np.testing.assert_array_equal(drop.apply({}, {}, x)[0], x)


def test_lrn_formula():
    x = jax.random.normal(jax.random.key(0), (1, 2, 2, 7))
    y = nn.LRN(size=5, alpha=1e-2, beta=0.75, k=2.0).apply({}, {}, x)[0]
    c = 3
    expected = x[..., c] / (2.0 + 1e-2 * jnp.sum(x[..., 1:6] ** 2, axis=-1)) ** 0.75
    np.testing.assert_allclose(y[..., c], expected, rtol=1e-5)
    edge = x[..., 0] / (2.0 + 1e-2 * jnp.sum(x[..., 0:3] ** 2, axis=-1)) ** 0.75
    np.testing.assert_allclose(y[..., 0], edge, rtol=1e-5)


def test_masked_conv_counts_only_connections():
    table = np.zeros((3, 4), bool)
    table[0, 0] = table[1, 1] = table[2, 2] = table[0, 3] = table[2, 3] = True
    conv = nn.Conv(4, 3, mask=table)
    _, params, _ = conv.init(jax.random.key(0), (1, 5, 5, 3))
    assert params["kernel"].shape == (3, 3, 5)
    x = jax.random.normal(jax.random.key(1), (1, 5, 5, 3))
    y = conv.apply(params, {}, x)[0]
    # output map 1 sees only input map 1; connections are stored in (in, out) row-major order
    slot = list(np.flatnonzero(table.reshape(-1))).index(1 * 4 + 1)
    full = jnp.zeros((3, 3, 3, 4)).at[:, :, 1, 1].set(params["kernel"][:, :, slot])
    np.testing.assert_allclose(y[..., 1], kernels.conv2d(x, full)[..., 1], rtol=1e-5, atol=1e-6)


def test_names_and_structure():
    net = nn.Sequential([
        ("block", nn.Residual([("conv", nn.Conv(4, 3, padding=1)), ("bn", nn.BatchNorm())],
                              shortcut=("proj", nn.Conv(4, 1)), activation="relu")),
        ("mix", nn.Concat([("a", nn.Conv(2, 1)), ("b", nn.MaxPool(3, 1, 1))])),
    ])
    out, params, state = net.init(jax.random.key(0), (2, 6, 6, 3))
    assert out == (2, 6, 6, 6)
    assert set(params) == {"block", "mix"}
    assert set(params["block"]) == {"conv", "bn", "proj"}
    assert set(state["block"]) == {"bn"}
    assert set(params["mix"]) == {"a"}
    with pytest.raises(ValueError, match="duplicate"):
        nn.Sequential([("a", nn.Relu()), ("a", nn.Relu())])
    with pytest.raises(ValueError, match="shortcut"):
        nn.Residual([("conv", nn.Conv(5, 3, padding=1))]).init(jax.random.key(0), (1, 4, 4, 3))


def test_keys_follow_names_not_positions():
    a = nn.Sequential([("conv1", nn.Conv(4, 3)), ("conv2", nn.Conv(4, 3))])
    b = nn.Sequential([("extra", nn.Conv(3, 1)), ("conv1", nn.Conv(4, 3)), ("conv2", nn.Conv(4, 3))])
    _, pa, _ = a.init(jax.random.key(0), (1, 9, 9, 3))
    _, pb, _ = b.init(jax.random.key(0), (1, 9, 9, 3))
    np.testing.assert_array_equal(pa["conv1"]["kernel"], pb["conv1"]["kernel"])


def test_receptive_field_of_stacked_3x3():
    net = nn.Sequential([(f"conv{i}", nn.Conv(2, 3, padding=1)) for i in range(3)])
    with nn.recording() as rec:
        net.init(jax.random.key(0), (1, 16, 16, 1))
    assert [r["receptive_field"] for r in rec.rows] == [3, 5, 7]
    dilated = nn.Sequential([("c1", nn.Conv(2, 3, dilation=2, padding=2)), ("c2", nn.Conv(2, 3, dilation=4, padding=4))])
    with nn.recording() as rec:
        dilated.init(jax.random.key(0), (1, 32, 32, 1))
    assert [r["receptive_field"] for r in rec.rows] == [5, 13]


def test_against_torch_pools_and_lrn():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 13, 13, 6)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))
    cases = [
        (nn.MaxPool(3, 2, rounding="ceil"), torch.nn.MaxPool2d(3, 2, ceil_mode=True)),
        (nn.MaxPool(3, 2, 1, rounding="floor"), torch.nn.MaxPool2d(3, 2, 1)),
        (nn.AvgPool(3, 2, 1, rounding="ceil"), torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True)),
        (nn.AvgPool(2, 2, rounding="floor"), torch.nn.AvgPool2d(2, 2)),
        (nn.AdaptiveAvgPool(4), torch.nn.AdaptiveAvgPool2d(4)),
        (nn.LRN(5, 1e-4 / 5, 0.75, 1.0), torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)),
    ]
    for ours, theirs in cases:
        expected = theirs(xt).numpy().transpose(0, 2, 3, 1)
        got = np.asarray(ours.apply({}, {}, jnp.asarray(x))[0])
        assert got.shape == expected.shape, (ours.kind, got.shape, expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_state_flows_through_every_branch_in_train_mode():
    block = nn.Residual([("conv", nn.Conv(4, 3, padding=1)), ("bn", nn.BatchNorm())],
                        shortcut=("proj", nn.Sequential([("conv", nn.Conv(4, 1)), ("bn", nn.BatchNorm())])))
    mix = nn.Concat([("a", nn.Sequential([("conv", nn.Conv(2, 1)), ("bn", nn.BatchNorm())])),
                     ("b", nn.Sequential([("conv", nn.Conv(2, 1)), ("bn", nn.BatchNorm())]))])
    x = jax.random.normal(jax.random.key(0), (4, 5, 5, 3)) + 1.0
    for layer in (block, mix):
        _, params, state = layer.init(jax.random.key(1), x.shape)
        _, new_state = layer.apply(params, state, x, train=True)
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_state, state)
        assert all(jax.tree_util.tree_leaves(changed)), changed


def test_pools_differentiate_under_jit():
    net = nn.Sequential([("conv", nn.Conv(3, 3, padding=1)), ("max", nn.MaxPool(2, 2)),
                         ("avg", nn.AvgPool(3, 1, 1)), ("gap", nn.GlobalAvgPool())])
    _, params, state = net.init(jax.random.key(0), (2, 8, 8, 2))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 2))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(net.apply(p, state, x)[0] ** 2)))(params)
    assert float(jnp.sum(jnp.abs(grads["conv"]["kernel"]))) > 0


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,groups,rounding",
                         [c for c in CONV_CASES if c[5] == 1])
def test_taps_equals_xla_values_and_gradients(shape, kernel, stride, padding, dilation, groups,
                                              rounding):
    """'taps' (shifted multiply-adds; the policy's choice for one input channel) on any
    geometry, with the single input channel it is chosen for (two channels: the same code)."""
    kh, kw = kernels.pair(kernel)
    shape = (*shape[:3], 1 if kh * kw > 9 else 2)
    x = normal(0, shape)
    w = normal(1, (kh, kw, shape[3], 5))
    run = lambda impl: lambda x, w: kernels.conv2d(x, w, stride=stride, padding=padding, dilation=dilation,
                                              rounding=rounding, impl=impl)
    probe = normal(2, run("xla")(x, w).shape)
    results = {impl: jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(run(impl)(x, w) * probe),
                                                argnums=(0, 1)))(x, w) for impl in ("taps", "xla")}
    np.testing.assert_allclose(jax.jit(run("taps"))(x, w), run("xla")(x, w), rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(results["taps"]), jax.tree.leaves(results["xla"])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="ungrouped"):
        kernels.conv2d(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 2, 4)), groups=2, impl="taps")


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,groups,rounding", CONV_CASES)
def test_explicit_input_gradient_equals_autodiff(shape, kernel, stride, padding, dilation, groups,
                                                 rounding):
    """The input gradient written as a forward conv (used by the matmul-weight-gradient path)."""
    kh, kw = kernels.pair(kernel)
    stride, padding, dilation = map(kernels.pair, (stride, padding, dilation))
    x = normal(0, shape)
    w = normal(1, (kh, kw, shape[3] // groups, 6 * groups))
    out_hw = kernels.spatial_out(x.shape, (kh, kw), stride, padding, dilation, rounding)
    pads = tuple(map(tuple, kernels.padding_pairs(x.shape, w.shape, stride, padding, dilation,
                                                  out_hw)))
    geom = kconv.Geom(stride, pads, dilation, groups, jax.lax.Precision.HIGHEST, None)
    y, vjp = jax.vjp(lambda a: kconv.xla_conv(a, w, geom), x)
    dy = normal(2, y.shape)
    got = kconv.input_grad(dy, w, geom, x.shape[1:3])
    assert got.shape == x.shape
    np.testing.assert_allclose(got, vjp(dy)[0], rtol=1e-5, atol=1e-5)


def _stack_of_blocks(n, scan, width=8):
    def block():
        return nn.Residual([("conv1", nn.Conv(width, 3, padding=1, bias=False)), ("bn1", nn.BatchNorm()),
                            ("relu1", nn.Relu()), ("drop", nn.Dropout(0.25)),
                            ("conv2", nn.Conv(width, 3, padding=1))], activation="relu")
    blocks = [(str(i), block()) for i in range(n)]
    return nn.Sequential([("stem", nn.Conv(width, 3, padding=1)), *blocks,
                          ("pool", nn.GlobalAvgPool())], scan=scan)


def _top_level_primitives(fn, *args):
    return [eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns]


def test_scanned_run_equals_unrolled_values_gradients_and_state():
    net = _stack_of_blocks(3, scan=True)
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    _, params, state = net.init(jax.random.key(0), x.shape)
    rng = jax.random.key(7)
    scan3, never = ConvPolicy(scan_min_run=3), ConvPolicy(scan_min_run=0)

    def grad(policy):
        def loss(p, s, x):
            y, new_s = net.apply(p, s, x, train=True, rng=rng, policy=policy)
            return jnp.sum(y ** 2), new_s
        return jax.value_and_grad(loss, has_aux=True)

    with nn.recording() as rec:
        scanned = jax.jit(grad(scan3))(params, state, x)
    unrolled = jax.jit(grad(never))(params, state, x)
    assert "scan" not in _top_level_primitives(
        lambda p, s, x: net.apply(p, s, x, policy=never), params, state, x)
    choices = rec.convs
    (l1, s1), g1 = scanned
    (l2, s2), g2 = unrolled
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    assert jax.tree.structure(g1) == jax.tree.structure(g2) == jax.tree.structure(params)
    assert jax.tree.structure(s1) == jax.tree.structure(s2) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves((g1, s1)), jax.tree.leaves((g2, s2))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # every block's running statistics moved, each by its own batch statistics
    means = [s1[str(i)]["bn1"]["mean"] for i in range(3)]
    assert all(float(jnp.abs(m).max()) > 0 for m in means)
    assert len({float(m[0]) for m in means}) == 3
    # the three identical blocks are one loop whose convs keep the forward
    # conv and take both gradients as plain convs and matmuls
    assert "scan" in _top_level_primitives(lambda p, s, x: net.apply(p, s, x, policy=scan3),
                                           params, state, x)
    in_loop = [impl for path, impl, *_ in choices if ".." in path]
    assert in_loop == ["xla+mmgrad", "xla+mmgrad"], choices


def test_scan_leaves_short_unmarked_and_unlike_runs_unrolled():
    x = jnp.ones((2, 8, 8, 3))
    policy = ConvPolicy(scan_min_run=3)
    for net in (_stack_of_blocks(2, scan=True), _stack_of_blocks(4, scan=False)):
        _, params, state = net.init(jax.random.key(0), x.shape)
        assert "scan" not in _top_level_primitives(
            lambda p, s, x: net.apply(p, s, x, policy=policy), params, state, x)
    # same kind and config but other kernel shapes (4 -> 5, 5 -> 5 channels): not identical;
    # identical pools that halve the map: not shape-preserving. No loop for either.
    for net, shape, out in [
            (nn.Sequential([("a", nn.Conv(5, 3, padding=1)), ("b", nn.Conv(5, 3, padding=1))],
                           scan=True), (2, 8, 8, 4), (2, 8, 8, 5)),
            (nn.Sequential([("a", nn.MaxPool(2)), ("b", nn.MaxPool(2))], scan=True),
             (2, 8, 8, 4), (2, 2, 2, 4))]:
        _, params, state = net.init(jax.random.key(0), shape)
        x = jnp.ones(shape)
        two = ConvPolicy(scan_min_run=2)
        assert "scan" not in _top_level_primitives(
            lambda p, s, x: net.apply(p, s, x, policy=two), params, state, x)
        assert net.apply(params, state, x)[0].shape == out


@pytest.mark.parametrize("shape", [(1,), (3, 100), (3, 3, 64, 64), (1024, 1025)])
def test_scaled_normal_is_the_keys_normal_draw_whatever_block_it_takes(shape):
    """Init's kernels are ``scale * jax.random.normal(key, (n,))`` reshaped (n <= 2**20), or
    2**20-value blocks from ``fold_in(key, i)``: drawn longer and cut on the host, the same
    values, traced or not."""
    key, n, scale = jax.random.key(7), int(np.prod(shape)), 0.3
    if n <= nn.init._NORMAL_BLOCK:
        expected = jax.random.normal(key, (n,))
    else:
        expected = jnp.concatenate([jax.random.normal(jax.random.fold_in(key, i), (nn.init._NORMAL_BLOCK,))
                                    for i in range(-(-n // nn.init._NORMAL_BLOCK))])[:n]
    expected = np.asarray(expected).reshape(shape) * np.float32(scale)
    got = nn.scaled_normal(key, shape, scale)
    assert got.shape == shape and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), expected)
    traced = jax.jit(lambda k: nn.scaled_normal(k, shape, scale))(key)
    np.testing.assert_allclose(np.asarray(traced), expected, rtol=1e-6, atol=1e-7)
    assert nn.init._draw_length(n) >= min(n, nn.init._NORMAL_BLOCK)
