"""Tensor-parallel GEMM benchmark (issue 9, item 3): FP6 vs XLA bf16, sharded the same way.

    python benchmarks/tp_gemm_bench.py --out tp_gemm.json          # all local GPUs
    python benchmarks/tp_gemm_bench.py --m 1 16 --shapes 8192x28672

For each shape K x N and each M, four methods are timed in the same process:

* ``column``: W split along N (out_features) over mesh axis ``model``, x replicated, y stays
  split along N (Megatron column parallel: QKV, up/gate);
* ``row``: W split along K, x split along K, y = all-reduced partial sums (Megatron row
  parallel: O, down);

each for ``xla_bf16`` (``jnp.dot`` on a ``NamedSharding``-placed bf16 W) and ``fp6_e3m2``
(plain ``jax_fpx.linear`` on an FPxWeight placed with ``jax_fpx.sharding.shard_weight``;
the op partitions itself), on all local devices and on device 0 alone. Weights stream from
HBM (``jax_fpx.bench``'s scheme: ~2 GB of distinct weights per timed call, per-matrix time).
One JSON row per (shape, M, parallel mode, method, devices).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="*", default=["8192x28672", "28672x8192"], help="KxN")
    p.add_argument("--m", type=int, nargs="*", default=[1, 16, 64])
    p.add_argument("--fmt", default="fp6_e3m2")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--stream-bytes", type=int, default=None, help="weight bytes per timed call (default: jax_fpx.cli.bench's 2 GiB)")
    p.add_argument("--out", default=None, help="write the rows as a JSON list here")
    a = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    from jax_fpx.cli import bench as B
    from jax_fpx.cli.timing import median_seconds
    from jax_fpx import sharding as S

    n_dev = jax.device_count()
    if n_dev < 2:
        print("# needs at least 2 devices; JAX sees", n_dev, file=sys.stderr)
        return 1
    mesh = jax.make_mesh((n_dev,), ("model",), axis_types=(AxisType.Auto,))
    device, jv = B._device_name(), jax.__version__
    rows = []
    key = jax.random.key(0)
    for shape in a.shapes:
        k, n = (int(v) for v in shape.lower().split("x"))
        for method in ("xla_bf16", a.fmt):
            count = B._weight_count(method, k, n, a.stream_bytes or B._STREAM_BYTES)
            key, wk = jax.random.split(key)
            ws, nbytes, apply = B._make_weights(method, k, n, count, wk)
            fn = jax.jit(lambda x, ws, apply=apply: [apply(x, w) for w in ws])
            for mode in ("column", "row"):
                in_axis, out_axis = (None, "model") if mode == "column" else ("model", None)
                if method == "xla_bf16":
                    tp_ws = [jax.device_put(w, NamedSharding(mesh, P(in_axis, out_axis))) for w in ws]
                else:
                    tp_ws = [S.shard_weight(w, mesh, in_axis, out_axis) for w in ws]
                x_spec = P(None, in_axis)
                for m in a.m:
                    key, xk = jax.random.split(key)
                    x = jax.random.normal(xk, (m, k), jnp.float32).astype(jnp.bfloat16)
                    x_tp = jax.device_put(x, NamedSharding(mesh, x_spec))
                    y1 = fn(x, ws)[0]
                    y2 = fn(x_tp, tp_ws)[0]
                    err = float(jnp.max(jnp.abs(jnp.asarray(y2, jnp.float32) - y1.astype(jnp.float32))))
                    for devices, args in ((1, (x, ws)), (n_dev, (x_tp, tp_ws))):
                        t = median_seconds(fn, *args, warmup=3, reps=a.reps) / count
                        rows.append(dict(shape=shape, K=k, N=n, M=m, mode=mode, method=method, devices=devices,
                                         us=t * 1e6, weight_GBps=nbytes / t / 1e9,
                                         max_abs_diff_vs_one_device=err if devices > 1 else 0.0,
                                         device=device, jax_version=jv))
                del tp_ws
            del ws
    base = {(r["shape"], r["M"], r["mode"], r["devices"]): r["us"] for r in rows if r["method"] == "xla_bf16"}
    one = {(r["shape"], r["M"], r["mode"], r["method"]): r["us"] for r in rows if r["devices"] == 1}
    for r in rows:
        r["ratio_vs_xla_bf16_same_sharding"] = base[(r["shape"], r["M"], r["mode"], r["devices"])] / r["us"]
        r["speedup_vs_one_device"] = one[(r["shape"], r["M"], r["mode"], r["method"])] / r["us"]
        print(f"{r['shape']:>11} M={r['M']:4d} {r['mode']:6s} {r['method']:>9} x{r['devices']}: {r['us']:8.1f} us  "
              f"vs bf16 x{r['ratio_vs_xla_bf16_same_sharding']:.2f}  vs 1 GPU x{r['speedup_vs_one_device']:.2f}",
              flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
