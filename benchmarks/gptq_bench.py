"""Time jax_fpx.quantize_gptq on one layer (default the 4096 x 14336 Llama-8B up projection).

    python benchmarks/gptq_bench.py out.json                       # default device (GPU if present)
    python benchmarks/gptq_bench.py out.json --k 1024 --n 2048     # smaller, e.g. on CPU

Prints and writes JSON rows {K, N, fmt, group_size, act_order, first_s (compile + run),
median_s (steady state, >= 3 runs), rtn_s (jax_fpx.quantize), device, jax_version}. The Hessian is
XᵀX of random correlated activations (its values do not change the work done).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import jax_fpx


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - t


def run(k: int, n: int, fmts, groups, act_orders, repeats: int, tokens: int) -> list[dict]:
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    w = jax.random.normal(k1, (k, n), jnp.float32) / k**0.5
    x = jax.random.normal(k2, (tokens, k), jnp.float32) @ (jnp.eye(k) + 0.1 * jax.random.normal(k3, (k, k)) / k**0.5)
    h = jax.jit(lambda x: jnp.dot(x.T, x, precision="highest"))(x)
    del x
    dev = jax.devices()[0]
    rows = []
    for fmt in fmts:
        for g in groups:
            for ao in act_orders:
                f = lambda: (lambda q: (q.data, q.scale))(jax_fpx.quantize_gptq(w, h, fmt, group_size=g, act_order=ao))
                first = _timed(f)
                ts = [_timed(f) for _ in range(repeats)]
                rtn = lambda: (lambda q: (q.data, q.scale))(jax_fpx.quantize(w, fmt, group_size=g))
                _timed(rtn)
                row = dict(K=k, N=n, fmt=fmt, group_size=g, act_order=ao, first_s=first, median_s=statistics.median(ts),
                           rtn_s=statistics.median([_timed(rtn) for _ in range(repeats)]),
                           device=getattr(dev, "device_kind", str(dev)), platform=dev.platform, jax_version=jax.__version__)
                rows.append(row)
                print(f"{k}x{n} {fmt} group={g} act_order={ao}: GPTQ {row['median_s']:.3f} s "
                      f"(first call {first:.2f} s incl. compile), RTN {row['rtn_s'] * 1e3:.1f} ms on {row['device']}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="JSON output path")
    ap.add_argument("--k", type=int, default=4096, help="in_features")
    ap.add_argument("--n", type=int, default=14336, help="out_features")
    ap.add_argument("--formats", default="fp6_e3m2,fp4_e2m1")
    ap.add_argument("--groups", default="none,128", help="comma-separated group sizes ('none' = per channel)")
    ap.add_argument("--act-order", default="0,1", help="comma-separated 0/1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=8192, help="calibration tokens of the synthetic XᵀX")
    a = ap.parse_args(argv)
    groups = [None if g.lower() == "none" else int(g) for g in a.groups.split(",")]
    rows = run(a.k, a.n, a.formats.split(","), groups, [bool(int(v)) for v in a.act_order.split(",")], a.repeats, a.tokens)
    with open(a.out, "w") as f:
        json.dump({"rows": rows}, f, indent=1)
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
