"""GPU kernel check (issue 14): impl="kernel" against the float32 reference over formats x dtypes x
odd shapes x groups x bias x batching, plus bit-identical reruns. Prints one line per case and a
summary; exits non-zero on any failure. `--small` for a quick subset (compute-sanitizer runs)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

import jax
import jax.numpy as jnp

import jax_fpx


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def case(fmt, dtype, k, n, m, group, bias, key, batch=None):
    k1, k2, k3 = jax.random.split(key, 3)
    kern = jax.random.normal(k1, (k, n), jnp.float32) * 0.05
    w = jax_fpx.quantize(kern, fmt, group_size=group)
    xs = (m, k) if batch is None else (batch, m, k)
    x = jax.random.normal(k2, xs, jnp.float32).astype(dtype)
    b = jax.random.normal(k3, (n,), jnp.float32) if bias else None
    f = jax.jit(lambda x, w, b: jax_fpx.linear(x, w, b, impl="kernel"))
    y1 = f(x, w, b)
    y2 = f(x, w, b)
    ref = jax_fpx.linear(x, w, b, impl="reference")
    e = rel_err(y1, ref)
    same = bool(np.array_equal(np.asarray(y1.view(jnp.uint16)), np.asarray(y2.view(jnp.uint16))))
    finite = bool(np.all(np.isfinite(np.asarray(y1, np.float32))))
    return e, same, finite


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    args = ap.parse_args()
    fmts = ["fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1"]
    shapes = [(64, 16, 1), (1000, 3000, 3), (384, 1536, 17), (130, 70, 5), (8192, 1024, 64), (4096, 2048, 100),
              (7, 9, 2), (640, 520, 33)]
    if args.small:
        fmts, shapes = ["fp6_e3m2", "fp4_e2m1"], [(130, 70, 5), (384, 1536, 17), (1000, 300, 64)]
    key = jax.random.key(0)
    bad = 0
    total = 0
    for fmt in fmts:
        for dtype in (jnp.bfloat16, jnp.float16):
            for i, (k, n, m) in enumerate(shapes):
                for group in (None, 128):
                    bias = (i + (group or 0)) % 2 == 0
                    key, sub = jax.random.split(key)
                    e, same, fin = case(fmt, dtype, k, n, m, group, bias, sub)
                    ok = e < (1e-2 if dtype == jnp.bfloat16 else 2e-3) and same and fin
                    total += 1
                    bad += not ok
                    print(f"{'ok ' if ok else 'BAD'} {fmt} {jnp.dtype(dtype).name} K={k} N={n} M={m} g={group} "
                          f"bias={bias} rel={e:.2e} rerun_identical={same}", flush=True)
    # batching: stacked weights (vmap) and folded x batch
    key, sub = jax.random.split(key)
    kern = jax.random.normal(sub, (3, 256, 96), jnp.float32)
    ws = jax_fpx.quantize(kern, "fp6_e3m2")
    x = jax.random.normal(key, (3, 5, 256), jnp.float32).astype(jnp.bfloat16)
    y = jax.jit(jax.vmap(lambda x, w: jax_fpx.linear(x, w, impl="kernel")))(x, ws)
    yr = jax.vmap(lambda x, w: jax_fpx.linear(x, w, impl="reference"))(x, ws)
    e = rel_err(y, yr)
    total += 1
    bad += not e < 1e-2
    print(f"{'ok ' if e < 1e-2 else 'BAD'} vmap stacked weights rel={e:.2e}")
    w1 = jax_fpx.quantize(kern[0], "fp5_e2m2", group_size=64)
    y = jax.jit(jax.vmap(lambda x: jax_fpx.linear(x, w1, impl="kernel")))(x)
    yr = jax.vmap(lambda x: jax_fpx.linear(x, w1, impl="reference"))(x)
    e = rel_err(y, yr)
    total += 1
    bad += not e < 1e-2
    print(f"{'ok ' if e < 1e-2 else 'BAD'} vmap folded x rel={e:.2e}")
    print(f"SUMMARY {total - bad} passed, {bad} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
