"""GEMM benchmark: FPx weight-only ``jax_fpx.linear`` vs XLA's bf16 ``jnp.dot`` (same process).

``python -m jax_fpx bench [--shapes FILE.json] [--smoke] [--methods ...] [--out DIR]``

Each timed call runs a *dependent chain* over many distinct weight matrices (~2 GB, so weights
stream from HBM, not from L2): every GEMM consumes the previous output (resized to K behind an
optimization barrier), as layers do, so independent GEMMs cannot overlap and flatter the per-GEMM
time. Per GEMM: (median chain call - median call of a no-work function with the same arguments) /
chain length, after ``warmup`` runs; the subtracted part (dispatch, sync) is ``call_overhead_us``.
Rows: ``{method, M, K, N, us, ratio_vs_xla_bf16, weight_GBps, pct_read_floor, device, ...}``;
``pct_read_floor`` is of the card's measured HBM read bandwidth (:data:`READ_FLOOR_GBPS`).

Methods: ``xla_bf16`` (bf16 weights, ``jnp.dot``), ``xla_fp8_e4m3`` / ``xla_int8`` (XLA weight-only
baselines: stored 8-bit weights, ``astype(bf16)`` + dot + per-channel scale), and FPx formats by
name (``fp6_e3m2``, ``fp6_e2m3``, ``fp5_e2m2``, ``fp4_e2m1``...) through ``jax_fpx.linear``
(``impl="auto"``, what users get); suffix ``:kernel`` / ``:xla`` forces that implementation,
``:fallback`` times the large-M path (dequantize + XLA dot), ``:kernel:s4`` also forces split_k=4, ``fp6_e3m2@group128`` uses per-group scales.
``cublas_fp16`` / ``cublas_bf16``: the same chain through torch (cuBLAS) captured in a CUDA graph and
timed with CUDA events (GPU with torch only; skipped otherwise).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import shapes as _shapes
from .timing import median_seconds

__all__ = ["run_gemm_bench", "load_shapes", "plot_results", "main", "DEFAULT_METHODS"]

DEFAULT_METHODS = ("xla_bf16", "fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1", "xla_fp8_e4m3", "xla_int8")
_STREAM_BYTES = 2 << 30  # weight bytes per timed call: >> the 50-60 MB L2
_MAX_WEIGHTS = 64
# Measured HBM read bandwidth (GB/s) by device kind: H200 from the team's kernel study, H100 SXM
# from benchmarks/KERNEL_NOTES.md (A.1).
READ_FLOOR_GBPS = {"NVIDIA H200": 4293.0, "NVIDIA H100 80GB HBM3": 2990.0}


def load_shapes(path: Optional[str] = None, smoke: bool = False) -> tuple[list[dict], list[int]]:
    """(shapes, batches): from a shapes.json file if ``path`` is given (``{"shapes": [...], "batches":
    [...]}``, optionally a ``cpu_smoke`` entry of the same form), else :mod:`jax_fpx.cli.shapes`."""
    if path is None:
        if smoke:
            return list(_shapes.SMOKE_SHAPES), list(_shapes.SMOKE_BATCHES)
        return list(_shapes.SHAPES), list(_shapes.BATCHES)
    with open(path) as f:
        spec = json.load(f)
    if smoke and "cpu_smoke" in spec:
        spec = spec["cpu_smoke"]
    return list(spec["shapes"]), list(spec["batches"])


def _device_name() -> str:
    d = jax.devices()[0]
    return getattr(d, "device_kind", d.platform)


def _make_weights(method: str, k: int, n: int, count: int, key) -> tuple[list, int, callable]:
    """Returns (weights, bytes per weight, apply(x, w) -> y)."""
    from .. import linear
    from ..formats import get_format
    from ..layout import data_shape, scale_shape
    from ..weight import FPxWeight

    keys = jax.random.split(key, count)
    if method == "xla_bf16":
        ws = [jax.random.normal(kk, (k, n), jnp.bfloat16) for kk in keys]
        return ws, k * n * 2, lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
    if method in ("xla_fp8_e4m3", "xla_int8"):
        dt = jnp.float8_e4m3fn if method == "xla_fp8_e4m3" else jnp.int8
        ws = []
        for kk in keys:
            q = jax.random.normal(kk, (k, n), jnp.float32) * (64.0 if dt == jnp.int8 else 8.0)
            ws.append((q.astype(dt), jnp.full((n,), 0.01, jnp.float32)))

        def apply8(x, w):
            q, s = w
            y = jnp.dot(x, q.astype(x.dtype), preferred_element_type=jnp.float32)
            return (y * s).astype(x.dtype)

        return ws, k * n + 4 * n, apply8
    # FPx: random codes are valid values in every eXmY format (no NaN/Inf codes).
    name, _, impl = method.partition(":")
    impl, _, split = impl.partition(":s")  # e.g. fp6_e3m2:kernel:s4 forces split_k=4
    split_k = int(split) if split else None
    name, _, grp = name.partition("@group")
    group = int(grp) if grp else None
    fmt = get_format(name)
    ds, ss = data_shape(k, n, fmt.bits, group), scale_shape(k, n, group)
    ws = []
    for kk in keys:
        data = jax.random.bits(kk, ds, jnp.uint32)
        scale = jnp.full(ss, 0.01, jnp.float32)
        ws.append(FPxWeight(data, scale, fmt, (k, n), group))
    nbytes = int(np.prod(ds)) * 4 + int(np.prod(ss)) * 4
    impl = impl or "auto"
    if impl == "fallback":  # the large-M path of impl="auto": dequantize (CUDA kernel) + XLA dot
        impl = "xla"
    return ws, nbytes, lambda x, w: linear(x, w, impl=impl, split_k=split_k)


def _resize(y, k: int):
    """[M, N] -> [M, K] by tiling/cutting (an elementwise-cost op between chained GEMMs)."""
    reps = -(-k // y.shape[-1])
    return jnp.tile(y, (1, reps))[:, :k] if reps > 1 else y[:, :k]


def _chain_fns(apply, k: int):
    """(chain, call_only): the jitted dependent chain over a list of weights, and a function with
    the same arguments that does no work (its time is the fixed cost of one call)."""

    @functools.partial(jax.jit, keep_unused=True)
    def chain(x, ws):
        y = x
        for w in ws:
            # the barrier keeps the resize out of the next GEMM's fusion (XLA would otherwise swap
            # cuBLAS for a slower fused GEMM on the bf16 path)
            y = jax.lax.optimization_barrier(_resize(apply(y, w), k))
        return y

    @functools.partial(jax.jit, keep_unused=True)
    def call_only(x, ws):
        return x + 1

    return chain, call_only


def _torch_chain_seconds(dtype_name: str, m: int, k: int, n: int, count: int, reps: int) -> Optional[float]:
    """Per-GEMM seconds of the same chain through torch (cuBLAS) in a CUDA graph, CUDA-event
    timed; None without torch or a CUDA device."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dt = getattr(torch, dtype_name)
    ws = [torch.randn(k, n, device="cuda", dtype=dt) * 0.02 for _ in range(count)]
    x = torch.randn(m, k, device="cuda", dtype=dt)
    reps_k = -(-k // n)

    def chain():
        y = x
        for w in ws:
            y = (y.repeat(1, reps_k)[:, :k] if reps_k > 1 else y[:, :k]) @ w
        return y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            chain()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()
    graph.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e-3)
    del ws, graph
    torch.cuda.empty_cache()
    return float(np.median(ts)) / count


def run_gemm_bench(
    shapes: Sequence[dict],
    batches: Iterable[int],
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    dtype=jnp.bfloat16,
    reps: int = 10,
    warmup: int = 3,
    stream_bytes: int = _STREAM_BYTES,
    max_weights: int = _MAX_WEIGHTS,
    seed: int = 0,
    log=print,
) -> list[dict]:
    """Times every method on every (shape, M); returns one row per (method, shape, M).

    ``shapes``: dicts with ``K``, ``N`` (and optionally ``name``). ``ratio_vs_xla_bf16`` is
    ``us(xla_bf16) / us(method)`` (>1: faster than bf16), ``xla_bf16`` is always timed.
    """
    methods = list(methods)
    if "xla_bf16" not in methods:
        methods = ["xla_bf16"] + methods
    device, jv = _device_name(), jax.__version__
    rows: list[dict] = []
    key = jax.random.PRNGKey(seed)
    floor = READ_FLOOR_GBPS.get(device)
    for shape in shapes:
        k, n = int(shape["K"]), int(shape["N"])
        sname = shape.get("name", f"{k}x{n}")
        for method in methods:
            count = _weight_count(method, k, n, stream_bytes, max_weights)
            meta = dict(device=device, jax_version=jv, shape=sname, n_weights=count, dtype=jnp.dtype(dtype).name)
            if method.startswith("cublas_"):
                for m in batches:
                    torch_dtype = {"cublas_fp16": "float16", "cublas_bf16": "bfloat16"}[method]
                    t = _torch_chain_seconds(torch_dtype, int(m), k, n, count, reps)
                    if t is None:
                        if log:
                            log(f"{method}: skipped (needs torch and a CUDA GPU)")
                        break
                    rows.append(dict(method=method, M=int(m), K=k, N=n, us=t * 1e6,
                                     weight_GBps=_bytes_estimate(method, k, n) / t / 1e9, call_overhead_us=None, **meta))
                continue
            key, wk = jax.random.split(key)
            ws, nbytes, apply = _make_weights(method, k, n, count, wk)
            chain, call_only = _chain_fns(apply, k)
            for m in batches:
                key, xk = jax.random.split(key)
                x = jax.random.normal(xk, (m, k), jnp.float32).astype(dtype)
                total = median_seconds(chain, x, ws, warmup=warmup, reps=reps)
                fixed = median_seconds(call_only, x, ws, warmup=warmup, reps=reps)
                t = max(total - fixed, 1e-9) / count
                rows.append(dict(method=method, M=int(m), K=k, N=n, us=t * 1e6, weight_GBps=nbytes / t / 1e9,
                                 call_overhead_us=fixed * 1e6, **meta))
            del ws
        for r in rows:
            if r["K"] == k and r["N"] == n:
                r["pct_read_floor"] = 100 * r["weight_GBps"] / floor if floor else None
        base = {(r["M"]): r["us"] for r in rows if r["method"] == "xla_bf16" and r["K"] == k and r["N"] == n}
        for r in rows:
            if r["K"] == k and r["N"] == n:
                r["ratio_vs_xla_bf16"] = base[r["M"]] / r["us"]
        if log:
            for r in rows:
                if r["K"] == k and r["N"] == n:
                    log(f"{sname:>20} M={r['M']:5d} {r['method']:>18} {r['us']:10.1f} us "
                        f"x{r['ratio_vs_xla_bf16']:.2f} {r['weight_GBps']:8.0f} GB/s")
    return rows


def _weight_count(method: str, k: int, n: int, stream_bytes: int = _STREAM_BYTES,
                  max_weights: int = _MAX_WEIGHTS) -> int:
    """Distinct weights per timed call: about ``stream_bytes`` of them (>= 2, <= ``max_weights``)."""
    return int(min(max_weights, max(2, math.ceil(stream_bytes / max(_bytes_estimate(method, k, n), 1)))))


def _bytes_estimate(method: str, k: int, n: int) -> int:
    if method in ("xla_bf16", "cublas_fp16", "cublas_bf16"):
        return 2 * k * n
    if method.startswith("xla_"):
        return k * n
    from ..formats import get_format

    name = method.partition(":")[0].partition("@")[0]
    return k * n * get_format(name).bits // 8


def plot_results(rows: Sequence[dict], path: str) -> Optional[str]:
    """Ratio vs XLA bf16 over M, one panel per shape; returns the path (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    shapes = list(dict.fromkeys((r["shape"], r["K"], r["N"]) for r in rows))
    cols = min(4, len(shapes))
    nrows = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, (sname, k, n) in zip(axes.flat, shapes):
        sub = [r for r in rows if r["K"] == k and r["N"] == n]
        for method in dict.fromkeys(r["method"] for r in sub):
            pts = sorted((r["M"], r["ratio_vs_xla_bf16"]) for r in sub if r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_title(f"{sname} (K={k}, N={n})", fontsize=9)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("speed-up vs XLA bf16")
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    dev = rows[0]["device"] if rows else ""
    fig.suptitle(f"jax_fpx GEMM vs XLA bf16 on {dev} (jax {rows[0]['jax_version'] if rows else ''})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jax_fpx bench", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default=None, help="shapes JSON file (default: jax_fpx/cli/shapes.py)")
    ap.add_argument("--smoke", action="store_true", help="tiny cpu_smoke shapes (default on CPU)")
    ap.add_argument("--only", default=None, help="comma list of shape names to run")
    ap.add_argument("--batches", default=None, help="comma list of M (default: from the shapes)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results", help="directory for JSON + PNG")
    ap.add_argument("--tag", default=None, help="file name stem (default: bench_<device>)")
    a = ap.parse_args(argv)
    smoke = a.smoke or jax.default_backend() == "cpu"
    shapes, batches = load_shapes(a.shapes, smoke=smoke)
    if a.only:
        keep = set(a.only.split(","))
        shapes = [s for s in shapes if s.get("name") in keep]
    if a.batches:
        batches = [int(b) for b in a.batches.split(",")]
    rows = run_gemm_bench(shapes, batches, [m for m in a.methods.split(",") if m], dtype=jnp.dtype(a.dtype),
                          reps=a.reps, **({"stream_bytes": 1 << 20, "max_weights": 2} if smoke else {}))
    os.makedirs(a.out, exist_ok=True)
    stem = a.tag or "bench_" + "".join(c if c.isalnum() else "_" for c in rows[0]["device"]).strip("_").lower()
    jpath = os.path.join(a.out, stem + ".json")
    with open(jpath, "w") as f:
        json.dump(rows, f, indent=1)
    ppath = plot_results(rows, os.path.join(a.out, stem + ".png"))
    print(f"wrote {jpath}" + (f" and {ppath}" if ppath else ""))
    return 0
