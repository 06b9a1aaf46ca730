import os
import tempfile

import pytest

# Tests compare float32 numbers: ask XLA for full-precision matmuls and convolutions.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# A developer's measured conv choices (zoo tune) must not change what the tests run.
os.environ.update(ZOO_TUNE_CACHE=os.path.join(tempfile.gettempdir(),
                                             f"zoo-tests-tune-cache-{os.getpid()}"))


@pytest.fixture(scope="session", autouse=True)
def temporary_files_under_pytests_root(tmp_path_factory):
    """Every temporary file or folder the tests' libraries make (TFDS makes an empty folder
    for each builder of a dataset that is not prepared, ``mock_data``'s included, and never
    removes it) goes under pytest's own temporary root, which pytest prunes; subprocesses
    inherit it through ``TMPDIR``."""
    folder = str(tmp_path_factory.mktemp("tempfile"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", folder)
        patch.setenv("TMPDIR", folder)
        yield folder


def normal(seed: int, shape) -> "jax.Array":
    """Standard-normal float32 test data from NumPy: each new shape through ``jax.random``
    compiles its own sampler (about 2 s each on the CI machine)."""
    import jax.numpy as jnp
    import numpy as np
    return jnp.asarray(np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32))
