"""``python -m jax_fpx quantize --model DIR --out DIR2 [--fmt F | --rules FILE]``: save a pre-quantized checkpoint.

Reads a Hugging Face Llama/Mistral/Qwen2 directory (or a pre-quantized one), quantizes each linear
kernel on the device as it streams in (:func:`jax_fpx.models.hf.load`), and writes ``DIR2`` with
``model.safetensors`` (packed codes + scales + per-tensor metadata and checksums), the source
``config.json`` and the tokenizer files, so ``generate --model DIR2`` needs neither the original
weights nor a re-quantization.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hugging Face checkpoint directory (config.json + *.safetensors) or a pre-quantized one")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fmt", default="fp6_e3m2", help="format of every linear kernel but lm_head (fp6_e3m2, fp6_e2m3, fp5_e2m2, fp4_e2m1, ...; 'none': dense)")
    g.add_argument("--rules", help="JSON/YAML rules file: ordered [{pattern, fmt, group_size}], first match wins")
    p.add_argument("--group-size", type=int, default=None, help="with --fmt: one scale per this many inputs (multiple of 64)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="dense weights and activations")
    p.add_argument("--no-verify", action="store_true", help="skip the checksums of a pre-quantized checkpoint")


def load_model(args, progress: bool = True):
    from ..models import hf

    fmt = None if str(args.fmt).lower() == "none" else args.fmt
    return hf.load(
        args.model, fmt=fmt, rules=args.rules, group_size=args.group_size, dtype=args.dtype, verify=not args.no_verify, progress=progress
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m jax_fpx quantize", description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)

    from ..checkpoint.quantized import is_quantized_checkpoint, save_quantized
    from ..checkpoint.safetensors_io import CheckpointError
    from ..models import hf
    from .memory import report

    if os.path.abspath(args.out) == os.path.abspath(args.model):
        p.error("--out must differ from --model")
    t0 = time.perf_counter()
    try:
        if is_quantized_checkpoint(args.model) and (args.rules or args.fmt != "fp6_e3m2"):
            print("note: --model is pre-quantized; it keeps the formats it was saved with", file=sys.stderr)
        cfg, params = load_model(args)
        rules = hf.resolve_rules(None if str(args.fmt).lower() == "none" else args.fmt, args.rules, args.group_size)
        source = hf.read_hf_config(args.model)
        t1 = time.perf_counter()
        path = save_quantized(args.out, params, source_config=source, rules=rules, progress=True)
    except (CheckpointError, ValueError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in TOKENIZER_FILES:
        src = os.path.join(args.model, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.out, name))
    from ..models.llama import weight_bytes

    print(
        f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB; weights {weight_bytes(params) / 2**20:.1f} MiB on device); "
        f"load+quantize {t1 - t0:.1f} s, save {time.perf_counter() - t1:.1f} s",
        file=sys.stderr,
    )
    print(report(), file=sys.stderr)
    return 0
