"""``python -m jax_fpx``: the main job; ``python -m jax_fpx bench``: the GEMM benchmark (see :mod:`jax_fpx.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
