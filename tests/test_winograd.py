"""Winograd's F(2x2, 3x3) (zoo.kernels.winograd) against XLA's convolution and a float64 reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import normal
from zoo import bench, kernels
from zoo.kernels import winograd
import zoo


def _xla(x, w, pads, preferred_element_type=None):
    return jax.lax.conv_general_dilated(x, w, (1, 1), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        preferred_element_type=preferred_element_type)


@pytest.mark.parametrize("shape, cout, pads", [
    ((2, 8, 8, 4), 6, ((1, 1), (1, 1))),      # even map, 'same' padding
    ((2, 7, 9, 5), 3, ((1, 1), (1, 1))),      # odd maps: the last tile row/column is cropped
    ((1, 6, 5, 3), 2, ((0, 0), (2, 1))),      # no padding, asymmetric padding
    ((1, 10, 10, 4), 4, ((1, -1), (0, 0))),   # a negative bottom padding crops the input
])
def test_equals_xla_convolution(shape, cout, pads):
    x, w = normal(0, shape), normal(1, (3, 3, shape[3], cout))
    ref = _xla(x, w, pads)
    y = winograd.conv3x3(x, w, pads, ref.shape[1:3])
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


def test_kernel_transform_is_g_w_gt():
    w = np.random.default_rng(3).standard_normal((3, 3, 2, 5))
    g = winograd.G
    expected = np.einsum("ai,ijck,bj->abck", g, w, g).reshape(16, 2, 5)
    np.testing.assert_allclose(winograd.kernel_transform(jnp.asarray(w, jnp.float32)), expected,
                               rtol=1e-6, atol=1e-6)


def _float64_conv(x, w):
    """The exact 'same' 3x3 convolution of ``x`` and ``w``'s values, in float64."""
    x64 = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    w64 = np.asarray(jnp.asarray(w, jnp.float32), np.float64)
    h, wd = x64.shape[1:3]
    xp = np.pad(x64, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(np.einsum("nhwc,ck->nhwk", xp[:, i:i + h, j:j + wd], w64[i, j])
               for i in range(3) for j in range(3))


def test_error_against_float64_is_close_to_xlas():
    """The transforms add roundings; on a ResNet-sized layer the error stays within 2x of
    XLA's own float32 convolution's (both against a float64 reference)."""
    x, w = normal(4, (2, 28, 28, 128)), normal(5, (3, 3, 128, 128)) / np.sqrt(9 * 128)
    pads = ((1, 1), (1, 1))
    exact = _float64_conv(x, w)
    err_xla = np.abs(np.asarray(_xla(x, w, pads), np.float64) - exact).max()
    err_wino = np.abs(np.asarray(winograd.conv3x3(x, w, pads, (28, 28)), np.float64) - exact).max()
    assert err_wino < 2 * err_xla, (err_wino, err_xla)
    assert err_wino < 1e-5 * np.abs(exact).max()


def test_bfloat16_is_transformed_in_float32_and_multiplied_as_bfloat16():
    """bfloat16 accumulating in float32: the 16 products take bfloat16 operands (where the
    CPU's bfloat16 dot instructions work), the transforms run in float32, and the rounded
    result is within 1.5 bfloat16 roundings of the largest output and 2x the error of XLA's
    bfloat16 convolution (which computes in float32 throughout). Transforms in bfloat16
    arithmetic miss the first bound (7.1e-3 of the largest output here)."""
    bf16 = jnp.bfloat16
    x = normal(0, (2, 14, 14, 64)).astype(bf16)
    w = (normal(1, (3, 3, 64, 64)) / np.sqrt(9 * 64)).astype(bf16)
    pads = ((1, 1), (1, 1))

    def wino(a, b):
        return winograd.conv3x3(a, b, pads, (14, 14), preferred_element_type=jnp.float32)

    products = [e for e in jax.make_jaxpr(wino)(x, w).eqns if e.primitive.name == "dot_general"
                and all(v.aval.dtype == bf16 for v in e.invars)]
    assert len(products) == 16
    assert all(e.outvars[0].aval.dtype == jnp.float32 for e in products)
    exact = _float64_conv(x, w)
    scale = np.abs(exact).max()

    def error(y):
        return np.abs(np.asarray(y.astype(bf16).astype(jnp.float32), np.float64) - exact).max()

    err_wino = error(jax.jit(wino)(x, w))
    err_xla = error(_xla(x, w, pads, preferred_element_type=jnp.float32))
    assert err_wino < 1.5 * 2.0 ** -8 * scale, (err_wino / scale)
    assert err_wino < 2 * err_xla, (err_wino, err_xla)


def test_bfloat16_layer_takes_winograd_under_the_default_policy_with_xlas_gradients():
    """A bfloat16 ResNet-sized layer in a train step: the default policy runs it as Winograd
    (forward and input gradient), within bfloat16 tolerance of XLA's values and gradients."""
    bf16 = jnp.bfloat16
    x = normal(2, (8, 14, 14, 32)).astype(bf16)
    w = (normal(3, (3, 3, 32, 32)) / np.sqrt(9 * 32)).astype(bf16)
    dy = normal(4, (8, 14, 14, 32))
    policy = zoo.ConvPolicy(native=False)   # on a CPU with AMX tiles: those (test_amx.py)
    g, _ = kernels.conv.geometry(x.shape, w.shape, padding=1, dtype=bf16)
    assert policy.choose(g, train=True) == "winograd"
    assert policy.replace(low_precision="native").choose(g, train=True) == "xla+stored"

    def loss(impl):
        def f(a, b):
            y = kernels.conv2d(a, b, padding=1, impl=impl, policy=policy, train=True)
            return jnp.sum(y.astype(jnp.float32) * dy), y
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

    (_, y_auto), grads_auto = loss("auto")(x, w)
    (_, y_wino), grads_wino = loss("winograd")(x, w)
    (_, y_xla), grads_xla = loss("xla")(x, w)
    assert y_auto.dtype == bf16
    np.testing.assert_array_equal(np.asarray(y_auto, np.float32), np.asarray(y_wino, np.float32))
    for a, b in [(y_wino, y_xla), *zip(grads_wino, grads_xla)]:
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert a.shape == b.shape
        assert np.abs(a - b).max() < 2e-2 * np.abs(b).max()


def test_rejects_other_kernels():
    with pytest.raises(ValueError, match="3x3 ungrouped kernel"):
        winograd.conv3x3(jnp.zeros((1, 8, 8, 4)), jnp.zeros((5, 5, 4, 4)), ((2, 2), (2, 2)), (8, 8))
    with pytest.raises(ValueError, match="3x3 ungrouped kernel for 4 input channels"):
        winograd.conv3x3(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 2, 4)), ((1, 1), (1, 1)), (8, 8))


def test_forcing_winograd_on_another_conv_is_an_error():
    x, w = jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 4, 4))
    with pytest.raises(ValueError, match="'winograd' takes 3x3, stride-1.*stride \\(2, 2\\)"):
        kernels.conv2d(x, w, stride=2, padding=1, rounding="floor", impl="winograd")
    y = kernels.conv2d(x + 1, w + 1, padding=1, impl="winograd")
    np.testing.assert_allclose(y, kernels.conv2d(x + 1, w + 1, padding=1, impl="xla"), rtol=1e-5)


def test_resnet18_uses_winograd_on_its_middle_stages_and_the_benchmark_can_switch_it_off():
    model = zoo.create("resnet18")
    rows = bench.conv_choices(model, (8, 224, 224, 3))
    wino = [path for path, impl, _, _ in rows if impl == "winograd"]
    assert wino == ["layer2/0/conv2", "layer2/1/conv1", "layer2/1/conv2",
                    "layer3/0/conv2", "layer3/1/conv1", "layer3/1/conv2"]
    assert "no_winograd" in bench.lever_variants(model, "infer", (8, 224, 224, 3), "float32")
