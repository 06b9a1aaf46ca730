"""zoo.kernels.pool_bn: the XLA:CPU fast paths equal the plain JAX expressions, values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.kernels import pool_bn as ops

POOLS = [  # input NHWC, window, strides, pads ((top, bottom), (left, right))
    ((2, 12, 12, 3), (3, 3), (2, 2), ((1, 0), (1, 0))),   # ResNet's stem pool, floor rule
    ((2, 8, 8, 4), (2, 2), (2, 2), ((0, 0), (0, 0))),     # VGG: windows do not overlap
    ((1, 7, 7, 5), (3, 3), (1, 1), ((1, 1), (1, 1))),     # GoogLeNet's branch pool, stride 1
    ((2, 13, 13, 2), (3, 3), (2, 2), ((0, 1), (0, 1))),   # ceil rule: a -inf right border
    ((1, 9, 11, 2), (3, 2), (2, 3), ((0, 0), (1, 1))),    # unequal windows and strides
]


def _reference_pool(x, window, strides, pads):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1),
                                 ((0, 0), *pads, (0, 0)))


@pytest.mark.parametrize("shape,window,strides,pads", POOLS)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_equals_reduce_window_values_and_gradients(shape, window, strides, pads, ties):
    x = jax.random.normal(jax.random.key(0), shape)
    if ties:  # after a ReLU whole windows are 0: the gradient must go where XLA's goes
        x = jnp.maximum(x, 0.0).round(1)
    y = jax.jit(ops.max_pool, static_argnums=(1, 2, 3))(x, window, strides, pads)
    y_ref = _reference_pool(x, window, strides, pads)
    np.testing.assert_array_equal(y, y_ref)
    g = jax.random.normal(jax.random.key(1), y.shape)
    dx = jax.jit(lambda x, g: jax.vjp(lambda x: ops.max_pool(x, window, strides, pads), x)[1](g)[0])(x, g)
    dx_ref = jax.vjp(lambda x: _reference_pool(x, window, strides, pads), x)[1](g)[0]
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(dx.sum()), float(g.sum()), rtol=1e-5)  # every cotangent lands once


def _reference_batch_norm(x, scale, bias, eps):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    return (x - mean) * (scale * jax.lax.rsqrt(var + eps)) + bias, mean, var


@pytest.mark.parametrize("shape", [(4, 6, 6, 8), (2, 3, 5, 16), (8, 1, 1, 4)])
def test_batch_norm_train_equals_autodiff_of_the_formula(shape):
    c = shape[-1]
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], shape) * 3.0 + 1.5
    scale, bias = jax.random.normal(keys[1], (c,)), jax.random.normal(keys[2], (c,))
    probe = jax.random.normal(keys[3], shape)
    out = ops.batch_norm_train(x, scale, bias, 1e-5)
    ref = _reference_batch_norm(x, scale, bias, 1e-5)
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    def loss(fn):
        return lambda x, s, b, probe: jnp.sum(fn(x, s, b, 1e-5)[0] * probe)

    grads = jax.jit(jax.grad(loss(ops.batch_norm_train), argnums=(0, 1, 2)))(x, scale, bias, probe)
    grads_ref = jax.grad(loss(_reference_batch_norm), argnums=(0, 1, 2))(x, scale, bias, probe)
    for a, b in zip(grads, grads_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # the statistics feed the running averages only: no gradient flows through them
    stat_grad = jax.grad(lambda x: jnp.sum(ops.batch_norm_train(x, scale, bias, 1e-5)[1]))(x)
    assert float(jnp.max(jnp.abs(stat_grad))) == 0.0


def test_stored_is_the_identity_and_survives_compilation():
    x = jnp.array([[jnp.nan, -0.0, jnp.inf], [1.5, -2.0, 3.0]])
    for first in (jnp.nan, 0.0):  # the predicate reads the first element
        xi = x.at[0, 0].set(first)
        got = jax.jit(ops.stored)(xi)
        np.testing.assert_array_equal(got, xi)
        assert np.signbit(got[0, 1])
    assert ops.stored(jnp.zeros((0, 3))).shape == (0, 3)
    g = jax.grad(lambda a: jnp.sum(ops.stored(a) * jnp.arange(6.0).reshape(2, 3)))(jnp.ones((2, 3)))
    np.testing.assert_array_equal(g, jnp.arange(6.0).reshape(2, 3))
    # the conditional is what keeps XLA from fusing the ReLU into the gradient's transpose
    w = jnp.ones((3, 3, 4, 4))
    loss = lambda w, x: jnp.sum(jax.lax.conv_general_dilated(
        ops.stored(jax.nn.relu(x)), w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    hlo = jax.jit(jax.grad(loss)).lower(w, jnp.ones((2, 8, 8, 4))).compile().as_text()
    assert "conditional(" in hlo
