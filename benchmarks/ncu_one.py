"""One jax_fpx GEMM launched six times (profilers: ncu --launch-skip 3, compute-sanitizer).

    python benchmarks/ncu_one.py K N M FORMAT
"""

import sys

import jax
import jax.numpy as jnp

import jax_fpx

k, n, m, fmt = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
w = jax_fpx.quantize((jax.random.normal(jax.random.key(0), (k, n)) * 0.02).astype(jnp.bfloat16), fmt)
x = jax.random.normal(jax.random.key(1), (m, k)).astype(jnp.bfloat16)
f = jax.jit(lambda x, w: jax_fpx.linear(x, w, impl="kernel"))
for _ in range(6):
    y = f(x, w)
y.block_until_ready()
ref = jax_fpx.linear(x, w, impl="reference")
err = float(jnp.linalg.norm((y - ref).astype(jnp.float32)) / jnp.linalg.norm(ref.astype(jnp.float32)))
print(f"K={k} N={n} M={m} {fmt}: rel err vs reference {err:.2e}")
sys.exit(0 if err < 1e-2 else 1)
