import os

# Tests compare float32 numbers: ask XLA for full-precision matmuls and convolutions.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
