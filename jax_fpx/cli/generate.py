"""``python -m jax_fpx generate --model DIR --prompt "..."``: text generation with FPx weights.

The generated text alone goes to stdout, as it is decoded (so it pipes); loading progress, the
token rate and peak memory go to stderr. ``--temperature 0`` (default) is greedy; ``--fmt none``
keeps the weights dense. The tokenizer is the checkpoint's ``tokenizer.json`` (``tokenizers``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _eos_ids(model_dir: str, cfg_json: dict) -> list[int]:
    eos = cfg_json.get("eos_token_id")
    gen = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(gen):
        with open(gen) as f:
            eos = json.load(f).get("eos_token_id", eos)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def main(argv: list[str]) -> int:
    from .quantize import add_model_args, load_model

    p = argparse.ArgumentParser(prog="python -m jax_fpx generate", description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    p.add_argument("--impl", default="auto", choices=["auto", "xla", "reference"], help="FPx matmul path")
    args = p.parse_args(argv)
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_new_tokens < 1:
        p.error("need --temperature >= 0, 0 < --top-p <= 1, --max-new-tokens >= 1")

    tok_path = os.path.join(args.model, "tokenizer.json")
    if not os.path.exists(tok_path):
        print(f"error: {tok_path} not found (generate needs the checkpoint's tokenizer.json)", file=sys.stderr)
        return 2
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("error: generate needs the 'tokenizers' package (pip install tokenizers)", file=sys.stderr)
        return 2

    from ..checkpoint.safetensors_io import CheckpointError
    from ..models import generation, hf
    from .memory import report

    tokenizer = Tokenizer.from_file(tok_path)
    t0 = time.perf_counter()
    try:
        cfg, params = load_model(args)
    except (CheckpointError, ValueError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    ids = tokenizer.encode(args.prompt).ids
    if not ids:
        print("error: the prompt encodes to no tokens", file=sys.stderr)
        return 2
    eos = [] if args.ignore_eos else _eos_ids(args.model, hf.read_hf_config(args.model))
    out: list[int] = []
    shown = ""
    t_first = t_second = None  # the first token pays the prefill compile, the second the decode-step compile
    t1 = time.perf_counter()
    for tok in generation.stream(
        params, cfg, ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, eos_ids=eos, impl=args.impl,
    ):
        if t_first is None:
            t_first = time.perf_counter()
        elif t_second is None:
            t_second = time.perf_counter()
        if tok in eos:
            break
        out.append(tok)
        text = tokenizer.decode(out)
        if text.startswith(shown) and not text.endswith("\ufffd"):  # print whole characters only
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    text = tokenizer.decode(out)
    if text.startswith(shown):
        sys.stdout.write(text[len(shown):])
    sys.stdout.write("\n")
    sys.stdout.flush()
    t2 = time.perf_counter()
    n = len(out)
    rate = (n - 2) / (t2 - t_second) if n > 2 and t_second is not None else float("nan")
    print(
        f"{len(ids)} prompt tokens, {n} generated; first token {((t_first or t2) - t1):.2f} s (prefill + compile), "
        f"then {rate:.1f} tokens/s after the decode step's compile",
        file=sys.stderr,
    )
    print(report(), file=sys.stderr)
    return 0
