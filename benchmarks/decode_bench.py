"""Decode-GEMM benchmark (issue 14): dependent GEMM chains, weights streamed from HBM.

Each method runs a chain of L GEMMs with L distinct weight matrices of one shape, every GEMM
consuming the previous output (resized to K by tiling: an M x K elementwise op), so the timing
contains no independent-GEMM overlap and no L2-resident weights. Methods, in one process:
XLA bf16 ``jnp.dot``, cuBLAS fp16/bf16 through torch (CUDA graph), jax_fpx per format. Per GEMM:
us (the fixed cost of one jitted call subtracted), ratio vs XLA bf16, weight GB/s and % of the
measured read floor.

    python benchmarks/decode_bench.py --out results.json [--shapes all|big] [--ms 1,4,16]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np

import jax
import jax.numpy as jnp

import jax_fpx

SHAPES = {
    "llama70b_mlp_up": (8192, 28672),
    "llama70b_mlp_down": (28672, 8192),
    "llama70b_qkv": (8192, 10240),
    "llama70b_o": (8192, 8192),
    "llama8b_mlp_up": (4096, 14336),
    "llama8b_mlp_down": (14336, 4096),
    "odd_1000x3000": (1000, 3000),
    "minilm_ffn": (384, 1536),
}
# Measured HBM read bandwidth per card (GB/s): H200 from kernel-study.md; H100 SXM from
# benchmarks/KERNEL_NOTES.md section 1.
READ_FLOOR_GBPS = {"NVIDIA H200": 4293.0, "NVIDIA H100 80GB HBM3": 2990.0}


def _resize(y, k):
    reps = -(-k // y.shape[-1])
    return jnp.tile(y, (1, reps))[:, :k] if reps > 1 else y[:, :k]


def _chain_len(weight_bytes: int) -> int:
    """Layers in a chain: about 1 GB of weights (17x the H200's 60 MB L2), 4..96 layers (the
    smallest shapes stay L2-sized at 48: they measure launch latency either way)."""
    return int(min(48, max(4, (1 << 30) // max(weight_bytes, 1))))


def _time(fn, args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def bench_jax(weights, gemm, m, k, dtype, reps, key):
    """Median time per GEMM of an unrolled chain over distinct weights (a list): each GEMM
    consumes the last output, resized to K behind an optimization barrier so XLA cannot fuse
    the resize into the next dot (which would swap cuBLAS for a slower fused GEMM). The fixed cost
    of one call (dispatch of L weight arguments, launch, sync: tens of us, measured as a call
    with the same arguments that computes nothing) is subtracted before dividing by L, as
    torch's CUDA-event timing of a graph replay does not contain it either."""

    @functools.partial(jax.jit, keep_unused=True)
    def chain(x, ws):
        y = x
        for w in ws:
            y = jax.lax.optimization_barrier(_resize(gemm(y, w), k))
        return y

    @functools.partial(jax.jit, keep_unused=True)
    def call_only(x, ws):
        return x + 1

    x = jax.random.normal(key, (m, k), jnp.float32).astype(dtype)
    fixed = _time(call_only, (x, weights), reps)
    total = _time(chain, (x, weights), reps)
    return max(total - fixed, 0.0) / len(weights) * 1e6, fixed * 1e6


def bench_torch(m, k, n, reps, dtype_name):
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dt = getattr(torch, dtype_name)
    nbytes = k * n * 2
    length = _chain_len(nbytes)
    ws = [torch.randn(k, n, device="cuda", dtype=dt) * 0.02 for _ in range(length)]
    x = torch.randn(m, k, device="cuda", dtype=dt)

    def chain():
        y = x
        for w in ws:
            reps_ = -(-k // y.shape[-1])
            y = (y.repeat(1, reps_)[:, :k] if reps_ > 1 else y[:, :k]) @ w
        return y

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            chain()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        chain()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    del ws, g
    torch.cuda.empty_cache()
    return float(np.median(ts)) / length, nbytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="all")
    ap.add_argument("--ms", default="1,2,4,8,16,32,64")
    ap.add_argument("--fmts", default="fp6_e3m2,fp6_e2m3,fp5_e2m2,fp4_e2m1")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--impl", default="auto")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--all-fmts-on", default="llama70b_mlp_up",
                    help="shapes timed in every format of --fmts; the others in the first format only")
    args = ap.parse_args()
    names = list(SHAPES) if args.shapes == "all" else args.shapes.split(",")
    ms = [int(v) for v in args.ms.split(",")]
    fmts = [f for f in args.fmts.split(",") if f]
    dev = jax.devices()[0]
    floor = READ_FLOOR_GBPS.get(dev.device_kind)
    rows = []

    def dump():
        with open(args.out, "w") as fh:
            json.dump({"about": __doc__.splitlines()[0], "device": dev.device_kind, "read_floor_GBps": floor,
                       "rows": rows}, fh, indent=1)

    key = jax.random.key(0)
    for name in names:
        k, n = SHAPES[name]
        bf_len = _chain_len(k * n * 2)
        base = (jax.random.normal(key, (k, n), jnp.float32) * 0.02).astype(jnp.bfloat16)
        bf16_ws = [base * (1 + 0.01 * i) for i in range(bf_len)]
        shape_fmts = fmts if name in args.all_fmts_on.split(",") else fmts[:1]
        fp_ws = {}
        for f in shape_fmts:
            w1 = jax_fpx.quantize(base, f)
            fp_ws[f] = [jax.tree.map(jnp.copy, w1) for _ in range(_chain_len(w1.nbytes))]
        for m in ms:
            fixed = {}
            t, fixed["xla_bf16"] = bench_jax(bf16_ws, jnp.dot, m, k, jnp.bfloat16, args.reps, key)
            res = {"xla_bf16": (t, k * n * 2)}
            if not args.no_torch:
                r = bench_torch(m, k, n, args.reps, "float16")
                if r:
                    res["cublas_float16"] = r
            for f in shape_fmts:
                ws = fp_ws[f]
                nbytes = ws[0].nbytes
                gemm = lambda x, w: jax_fpx.linear(x, w, impl=args.impl)
                t, fixed[f] = bench_jax(ws, gemm, m, k, jnp.bfloat16, args.reps, key)
                res[f] = (t, nbytes)
            base_t = res["xla_bf16"][0]
            for meth, (t, nb) in res.items():
                gbps = nb / (t * 1e-6) / 1e9
                rows.append(dict(shape=name, method=meth, M=m, K=k, N=n, us=round(t, 2),
                                 ratio_vs_xla_bf16=round(base_t / t, 3), weight_GBps=round(gbps, 1),
                                 pct_read_floor=round(100 * gbps / floor, 1) if floor else None,
                                 call_overhead_us=round(fixed[meth], 1) if meth in fixed else None,
                                 device=dev.device_kind, jax_version=jax.__version__))
            line = " ".join(f"{meth}={t:.1f}us({base_t / t:.2f}x,{nb / t / 1e3:.0f}GB/s)" for meth, (t, nb) in res.items())
            print(f"{name} M={m}: {line}", flush=True)
            dump()  # after every batch size: a run cut short keeps what it measured
        del bf16_ws, fp_ws


if __name__ == "__main__":
    main()
