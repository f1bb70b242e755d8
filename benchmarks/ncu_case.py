"""One kernel call per M for Nsight Compute: 8192x28672 (llama70b mlp up), fp6_e3m2, bf16.

M values: NCU_MS (comma list, default 1,16,64)."""
import os
import sys

import jax
import jax.numpy as jnp

from jax_fpx.formats import get_format
from jax_fpx.layout import data_shape, scale_shape
from jax_fpx.weight import FPxWeight
import jax_fpx

k, n = 8192, 28672
fmt = get_format(sys.argv[1] if len(sys.argv) > 1 else "fp6_e3m2")
w = FPxWeight(jax.random.bits(jax.random.PRNGKey(0), data_shape(k, n, fmt.bits, None), jnp.uint32),
              jnp.full(scale_shape(k, n, None), 0.01, jnp.float32), fmt, (k, n), None)
for m in [int(v) for v in os.environ.get("NCU_MS", "1,16,64").split(",")]:
    x = jax.random.normal(jax.random.PRNGKey(m), (m, k)).astype(jnp.bfloat16)
    jax.block_until_ready(jax_fpx.linear(x, w, impl="kernel"))
print("done")
