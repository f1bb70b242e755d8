"""Eager (un-jitted) call cost: ms per call and resident-memory growth over many calls (issue 16,
item 1). The test suite checks the memory and that nothing recompiles (tests/test_eager.py); the
per-call times live here, measured, not asserted.

    python benchmarks/eager_bench.py [--calls 1000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import jax_fpx
from jax_fpx.flax import FPxDense


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def measure(fn, calls: int) -> dict:
    for _ in range(20):
        jax.block_until_ready(fn())
    gc.collect()
    r0, t0 = _rss_mib(), time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(fn())
    ms = (time.perf_counter() - t0) / calls * 1e3
    gc.collect()
    return {"ms_per_call": round(ms, 3), "rss_growth_mib": round(_rss_mib() - r0, 2), "calls": calls}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    w = jax_fpx.quantize(jax.random.normal(jax.random.key(0), (64, 16)))
    x, b = jnp.ones((4, 64), jnp.bfloat16), jnp.linspace(-1, 1, 16)
    layer, dense = FPxDense(16), nn.Dense(16)
    params, dparams = layer.init(jax.random.key(0), x), dense.init(jax.random.key(0), x)
    cases = {f"linear impl={impl}": (lambda impl=impl: jax_fpx.linear(x, w, b, impl=impl))
             for impl in ("auto", "xla", "reference")}
    cases["dequantize"] = lambda: jax_fpx.dequantize(w)
    cases["FPxDense.apply"] = lambda: layer.apply(params, x)
    cases["nn.Dense.apply (bar)"] = lambda: dense.apply(dparams, x)
    rows = []
    for name, fn in cases.items():
        r = dict(case=name, **measure(fn, a.calls), device=jax.devices()[0].device_kind, jax_version=jax.__version__)
        print(r, flush=True)
        rows.append(r)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
