"""A few kernel calls for compute-sanitizer (memcheck / racecheck): odd shapes, split-K, groups, bias.

SANITIZE_ONLY=tiled keeps the cases of the shared-memory tiled kernel (M > 16, K % 8 == 0) only.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

import jax_fpx
from jax_fpx import reference

CASES = [(1000, 3000, 3, "fp6_e3m2", None, None), (4097, 1111, 17, "fp5_e2m2", 128, 3),
         (384, 1536, 64, "fp4_e2m1", 64, None), (40, 24, 1, "fp6_e2m3", None, 1),
         (1000, 1000, 130, "fp6_e3m2", None, 2), (200, 72, 33, "fp6_e2m3", None, None)]
if os.environ.get("SANITIZE_ONLY") == "tiled":
    CASES = [c for c in CASES if c[2] > 16 and c[0] % 8 == 0]
for (k, n, m, fmt, group, split) in CASES:
    w = jax_fpx.quantize(jax.random.normal(jax.random.PRNGKey(0), (k, n)) * 0.05, fmt, group_size=group)
    b = jnp.linspace(-1, 1, n)
    for dt in (jnp.bfloat16, jnp.float16):
        x = jax.random.normal(jax.random.PRNGKey(1), (m, k)).astype(dt)
        y = jax_fpx.linear(x, w, b, impl="kernel", split_k=split)
        r = reference.linear(x, w, b)
        err = float(jnp.linalg.norm((y - r).astype(jnp.float32)) / jnp.linalg.norm(r.astype(jnp.float32)))
        print(k, n, m, fmt, group, split, jnp.dtype(dt).name, f"rel err {err:.2e}")
        assert np.isfinite(err) and err < 2e-2
print("SANITIZE_CASES_OK")
