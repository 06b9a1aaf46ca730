import os
import tempfile

# Tests compare float32 numbers: ask XLA for full-precision matmuls and convolutions.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# A developer's measured conv choices (zoo tune) must not change what the tests run.
os.environ.update(ZOO_TUNE_CACHE=os.path.join(tempfile.gettempdir(),
                                             f"zoo-tests-tune-cache-{os.getpid()}"))


def normal(seed: int, shape) -> "jax.Array":
    """Standard-normal float32 test data from NumPy: each new shape through ``jax.random``
    compiles its own sampler (about 2 s each on the CI machine)."""
    import jax.numpy as jnp
    import numpy as np
    return jnp.asarray(np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32))
