import os

import pytest

# Tests compare float32 numbers: ask XLA for full-precision matmuls and convolutions.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")


def normal(seed: int, shape) -> "jax.Array":
    """Standard-normal float32 test data from NumPy: each new shape through ``jax.random``
    compiles its own sampler (about 2 s each on the CI machine)."""
    import jax.numpy as jnp
    import numpy as np
    return jnp.asarray(np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32))


# Winograd's layers cost about 1 s of XLA compile each (docs/benchmarks.md) and the suite
# compiles whole models dozens of times, so the tests run with the lever off; the shipped
# setting is on in the tests of the conv policy and of Winograd itself, and in the
# torchvision parity of the models in test_pretrained.WINOGRAD_PARITY (``shipped_winograd``).
from zoo import nn as _nn  # noqa: E402

SHIPPED_WINOGRAD = _nn.CONV_LEVERS["winograd"]
_nn.CONV_LEVERS["winograd"] = ()


def shipped_winograd(**levers):
    """The conv levers as shipped (Winograd on), for the traces made inside the block, and
    any other ``levers`` given."""
    return _nn.conv_levers(winograd=SHIPPED_WINOGRAD, **levers)


@pytest.fixture
def winograd_as_shipped():
    with shipped_winograd():
        yield
