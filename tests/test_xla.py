"""zoo.jit: jax.jit with zoo's XLA:CPU options (no YNNPACK fusions), same numbers."""
import jax
import jax.numpy as jnp
import numpy as np

import zoo
from zoo.kernels import xla


def _small_convnet():
    model = zoo.create("lenet5")
    variables = model.init(jax.random.key(0), (4, 32, 32, 1))
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 1))
    return model, variables, x


def test_zoo_jit_compiles_without_library_fusions_and_matches_jax_jit():
    model, v, x = _small_convnet()
    fn = lambda p, s, x: model.apply(p, s, x)[0]  # noqa: E731
    hlo = zoo.jit(fn).lower(v["params"], v["state"], x).compile().as_text()
    assert "__ynn_fusion" not in hlo
    assert xla.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    expected = xla.compiler_options("cpu") if jax.default_backend() == "cpu" else {}
    assert xla.compiler_options() == expected  # accelerators get XLA's defaults
    np.testing.assert_allclose(zoo.jit(fn)(v["params"], v["state"], x),
                               jax.jit(fn)(v["params"], v["state"], x), rtol=1e-5, atol=1e-5)


def test_zoo_jit_keeps_jax_jit_arguments_and_decorator_forms():
    @zoo.jit(static_argnums=1)
    def power(x, n):
        return x ** n

    assert float(power(jnp.float32(3.0), 2)) == 9.0
    double = zoo.jit(lambda x: 2 * x, compiler_options={"xla_cpu_enable_fast_math": False})
    np.testing.assert_array_equal(double(jnp.arange(3.0)), [0.0, 2.0, 4.0])
    assert xla.compiler_options("gpu") == {}


def test_bfloat16_programs_get_the_cpus_bfloat16_matmuls():
    """On a CPU with bfloat16 dot instructions a low-precision program's matmuls go to
    YNNPACK, which multiplies bfloat16 into float32 (XLA's own dot converts to float32
    first); float32 programs and convolutions stay XLA's."""
    has = any(f in open("/proc/cpuinfo").read().split() for f in xla.BF16_DOT_FLAGS) \
        if jax.default_backend() == "cpu" else False
    assert xla.bf16_dots() == has
    want = xla.YNNPACK_DOT_OPTIONS if has else xla.CPU_COMPILER_OPTIONS
    assert xla.compiler_options("cpu", low_precision=True) == want
    assert xla.compiler_options("cpu", low_precision=False) == xla.CPU_COMPILER_OPTIONS
    assert xla.compiler_options("gpu", low_precision=True) == {}
    a = jax.random.normal(jax.random.key(0), (64, 96)).astype(jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (96, 32)).astype(jnp.bfloat16)
    dot = lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)  # noqa: E731
    low = zoo.jit(dot, low_precision=True)
    hlo = low.lower(a, b).compile().as_text()
    assert ("__ynn_fusion" in hlo) == (has and jax.default_backend() == "cpu")
    assert "__ynn_fusion" not in zoo.jit(dot).lower(a, b).compile().as_text()
    np.testing.assert_allclose(low(a, b), np.asarray(a, np.float32) @ np.asarray(b, np.float32),
                               rtol=1e-5, atol=1e-4)
