"""Llama-style decoder (Flax linen) decoding with bf16 vs FP6 weights: tokens/s and memory.

    python examples/llama.py --size tiny --steps 16                       # CPU smoke run
    python examples/llama.py --size 8b  --batch 1 --steps 64 --json llama8b.json
    python examples/llama.py --size 70b --batch 1 --steps 64 --variants fp6 --json llama70b.json

Random weights (speed only). Each variant: params drawn on the device leaf by leaf (FP6: each
kernel quantized right after it is drawn, lm_head included unless --no-quantize-lm-head, so the
70B FP6 model never holds a dense bf16 copy), one jit'd prefill of --prompt-len tokens, then a
jit'd greedy decode of --steps tokens in one lax.fori_loop with a static KV cache. Decode is
timed --repeats times after a warm-up call (median reported). FP6 runs first, then its params
are freed and bf16 runs, so the FP6 peak memory is measured before any bf16 weights exist.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

# The 70B FP6 model needs ~57 GB of an 80 GB GPU: let XLA's allocator take more than its
# default 75%. (Set before JAX initializes its backend; an explicit setting wins.)
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax
import jax.numpy as jnp
import numpy as np

import jax_fpx
from jax_fpx.models import llama as L


def _mem(dev) -> dict:
    try:
        s = dev.memory_stats() or {}
    except Exception:  # CPU devices may not report
        s = {}
    return {k: int(s[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in s}


def _tp_mesh(n: int):
    """A 1-D mesh over the first n devices (axis 'model'), or None for n == 1."""
    if n <= 1:
        return None
    from jax.sharding import AxisType

    if len(jax.devices()) < n:
        raise SystemExit(f"--tp {n} needs {n} devices, JAX sees {len(jax.devices())}")
    return jax.make_mesh((n,), ("model",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def run_variant(cfg, variant, args, dev) -> dict:
    mesh = _tp_mesh(getattr(args, "tp", 1))
    fmt = None if variant == "bf16" else args.fmt
    t = time.perf_counter()
    params = L.init_params(
        cfg, args.seed, fmt=fmt, group_size=args.group_size, quantize_lm_head=not args.no_quantize_lm_head,
        progress=args.progress, mesh=mesh,
    )
    jax.block_until_ready(params)
    init_s = time.perf_counter() - t
    mem_params = _mem(dev)
    prompt = np.random.RandomState(args.seed).randint(0, cfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
    max_len = args.prompt_len + args.steps + 1
    impl = args.impl if fmt is not None else "auto"

    def one_run():
        cache = L.init_cache(cfg, args.batch, max_len)
        if mesh is not None:
            cache = L.shard_cache(cache, mesh)
        t0 = time.perf_counter()
        tok, cache = L.prefill(params, jnp.asarray(prompt), cache, cfg=cfg, impl=impl)
        tok.block_until_ready()
        t1 = time.perf_counter()
        out, cache = L.decode(params, tok, cache, jnp.int32(args.prompt_len), cfg=cfg, steps=args.steps, impl=impl)
        out.block_until_ready()
        t2 = time.perf_counter()
        del cache
        return t1 - t0, t2 - t1, np.concatenate([np.asarray(tok)[:, None], np.asarray(out)], 1)

    t = time.perf_counter()
    _, _, tokens = one_run()  # compiles prefill + decode
    compile_s = time.perf_counter() - t
    runs = [one_run() for _ in range(args.repeats)]
    dec = statistics.median(r[1] for r in runs)
    pre = statistics.median(r[0] for r in runs)
    res = {
        "variant": variant,
        "format": None if fmt is None else jax_fpx.get_format(fmt).name,
        "group_size": args.group_size if fmt else None,
        "impl": impl,
        "weight_bytes": L.weight_bytes(params),
        "init_s": round(init_s, 3),
        "compile_plus_first_run_s": round(compile_s, 3),
        "prefill_ms": round(pre * 1e3, 3),
        "decode_s": round(dec, 5),
        "decode_tokens_per_s": args.batch * args.steps / dec,
        "ms_per_step": dec / args.steps * 1e3,
        "memory_after_params": mem_params,
        "memory_after_run": _mem(dev),
        "tokens": tokens[:, : min(16, tokens.shape[1])].tolist(),
    }
    del params
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=sorted(L.CONFIGS), help="model shape")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--steps", type=int, default=64, help="decode steps (tokens per sequence)")
    ap.add_argument("--repeats", type=int, default=3, help="timed decode runs after the warm-up (median)")
    ap.add_argument("--fmt", default="fp6_e3m2", help="FPx format of the quantized variant")
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--impl", default="auto", help="jax_fpx.linear impl for the FPx variant")
    ap.add_argument("--variants", default=None,
                    help="comma-separated subset of fp6,bf16 (default: both; 70b: fp6 only - bf16 70B does not fit 80 GB)")
    ap.add_argument("--no-quantize-lm-head", action="store_true", help="keep lm_head in bf16 in the FPx variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="progress bar while drawing/quantizing params")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel over this many devices (mesh axis 'model')")
    ap.add_argument("--json", default=None, help="write the summary JSON here")
    a = ap.parse_args(argv)
    cfg = L.CONFIGS[a.size]
    variants = a.variants.split(",") if a.variants else (["fp6"] if a.size == "70b" else ["fp6", "bf16"])
    dev = jax.devices()[0]
    print(f"{a.size}: {cfg.n_params() / 1e9:.2f}B params, batch {a.batch}, prompt {a.prompt_len}, "
          f"{a.steps} decode steps on {dev.device_kind}", flush=True)
    results = []
    for v in variants:
        r = run_variant(cfg, v, a, dev)
        gc.collect()  # the variant's params are gone before the next one is drawn
        results.append(r)
        peak = r["memory_after_run"].get("peak_bytes_in_use")
        print(f"  {v:5s} weights {r['weight_bytes'] / 2**30:7.2f} GiB  decode {r['decode_tokens_per_s']:9.1f} tok/s "
              f"({r['ms_per_step']:.2f} ms/step)  peak mem {'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'}",
              flush=True)
    by = {r["variant"]: r for r in results}
    summary = {
        "size": a.size,
        "config": cfg.__dict__,
        "n_params": cfg.n_params(),
        "batch": a.batch,
        "tp": a.tp,
        "prompt_len": a.prompt_len,
        "steps": a.steps,
        "device": dev.device_kind,
        "platform": dev.platform,
        "jax_version": jax.__version__,
        "results": results,
    }
    if "fp6" in by and "bf16" in by:
        summary["speedup_fp6_vs_bf16"] = by["fp6"]["decode_tokens_per_s"] / by["bf16"]["decode_tokens_per_s"]
        a_t, b_t = np.asarray(by["fp6"]["tokens"]), np.asarray(by["bf16"]["tokens"])
        summary["token_agreement_fp6_vs_bf16"] = float((a_t == b_t).mean())
        print(f"  FP6 / bf16 decode speedup: {summary['speedup_fp6_vs_bf16']:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
