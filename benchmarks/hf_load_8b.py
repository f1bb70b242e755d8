"""Load a synthetic Hugging Face Llama checkpoint into FPx and measure host and device peak memory.

    python benchmarks/hf_load_8b.py --size 8b --out benchmarks/results/hf_load_8b_h200.json   # on the GPU
    python benchmarks/hf_load_8b.py --size 1b --out /tmp/hf_load_1b_cpu.json                   # CPU-scale

1. Writes a random bf16 checkpoint with Llama-3.1 8B shapes (config.json, ~5 GB shards +
   model.safetensors.index.json, as the Hub ships it) to --dir (default: a temp dir; ~16 GB at 8b).
2. In a fresh process: ``jax_fpx.models.hf.load(dir, fmt)`` (stream, quantize on the device), then
   greedy decode a few tokens; records wall time, host peak RSS (``ru_maxrss``) and its baseline
   after backend start-up, the device's ``peak_bytes_in_use`` (GPU) and the live-array peak the
   loader saw, the quantized weight bytes and the largest tensor.
3. Saves the pre-quantized checkpoint and, in another fresh process, loads it back (no
   re-quantization, checksums verified on the device) with the same measurements.
Writes all rows to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SIZES = {
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4),
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}
SHARD_BYTES = 5 * 2**30


def write_checkpoint(d: str, size: str) -> None:
    import ml_dtypes

    from jax_fpx.checkpoint.safetensors_io import save_file

    c = SIZES[size]
    cfg = dict(c, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=False,
               max_position_embeddings=131072, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    D, F, V, hd = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["hidden_size"] // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (V, D)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes.update({f"{p}.input_layernorm.weight": (D,), f"{p}.post_attention_layernorm.weight": (D,),
                       f"{p}.self_attn.q_proj.weight": (D, D), f"{p}.self_attn.k_proj.weight": (kv, D), f"{p}.self_attn.v_proj.weight": (kv, D),
                       f"{p}.self_attn.o_proj.weight": (D, D), f"{p}.mlp.gate_proj.weight": (F, D), f"{p}.mlp.up_proj.weight": (F, D),
                       f"{p}.mlp.down_proj.weight": (D, F)})
    shapes.update({"model.norm.weight": (D,), "lm_head.weight": (V, D)})
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(1 << 20, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)

    def make(shape):  # tiled random block: fast, and every row differs
        if len(shape) == 1:
            return lambda: np.ones(shape, ml_dtypes.bfloat16)
        return lambda: np.resize(np.roll(block, shape[0] % 977), shape)

    shards, cur, size_now = [], {}, 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        if cur and size_now + nbytes > SHARD_BYTES:
            shards.append(cur)
            cur, size_now = {}, 0
        cur[name] = (ml_dtypes.bfloat16, shape, make(shape))
        size_now += nbytes
    shards.append(cur)
    wmap = {}
    for i, sh in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(os.path.join(d, fname), sh, {"format": "pt"})
        wmap.update({n: fname for n in sh})
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wmap}, f)


def measure(mode: str, d: str, fmt: str, out_json: str, qdir: str) -> None:
    """Runs in a fresh process: one load, its peaks, a short greedy decode."""
    import jax
    import jax.numpy as jnp

    from jax_fpx.cli.memory import device_peak_bytes, host_peak_bytes
    from jax_fpx.models import hf, llama

    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(4)))
    base = host_peak_bytes()
    stats = {}
    t0 = time.perf_counter()
    cfg, params = hf.load(d if mode == "hf" else qdir, fmt=fmt, stats=stats, progress=True)
    jax.block_until_ready(params)
    t_load = time.perf_counter() - t0
    row = dict(mode=mode, fmt=fmt, load_s=round(t_load, 2), host_peak_GiB=host_peak_bytes() / 2**30, host_baseline_GiB=base / 2**30,
               device_peak_GiB=(lambda b: None if b is None else b / 2**30)(device_peak_bytes()),
               weights_GiB=llama.weight_bytes(params) / 2**30, device=str(jax.devices()[0].device_kind), jax_version=jax.__version__, **stats)
    if "device_live_peak_bytes" in row:
        row["device_live_peak_GiB"] = row.pop("device_live_peak_bytes") / 2**30
    if "host_peak_tensor_bytes" in row:
        row["largest_tensor_GiB"] = row.pop("host_peak_tensor_bytes") / 2**30
    prompt = np.arange(1, 9, dtype=np.int32)[None]
    jax.block_until_ready(llama.generate(params, prompt, cfg, 32))  # compile + warm (steps is static)
    t0 = time.perf_counter()
    toks = jax.block_until_ready(llama.generate(params, prompt, cfg, 32))
    row["decode_tokens_per_s"] = round(32 / (time.perf_counter() - t0), 2)
    row["device_peak_after_decode_GiB"] = (lambda b: None if b is None else b / 2**30)(device_peak_bytes())
    if mode == "hf":
        from jax_fpx.checkpoint.quantized import save_quantized

        t0 = time.perf_counter()
        save_quantized(qdir, params, source_config=hf.read_hf_config(d), rules=hf.resolve_rules(fmt))
        row["save_prequantized_s"] = round(time.perf_counter() - t0, 2)
        row["prequantized_file_GiB"] = os.path.getsize(os.path.join(qdir, "model.safetensors")) / 2**30
    with open(out_json, "w") as f:
        json.dump(row, f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="8b", choices=sorted(SIZES))
    ap.add_argument("--fmt", default="fp6_e3m2")
    ap.add_argument("--dir", default=None, help="where to write the synthetic checkpoint (default: a temp dir, removed after)")
    ap.add_argument("--out", required=True, help="JSON results path")
    ap.add_argument("--_measure", nargs=4, metavar=("MODE", "DIR", "QDIR", "JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._measure:
        mode, d, qdir, js = a._measure
        measure(mode, d, a.fmt, js, qdir)
        return 0
    tmp = a.dir or tempfile.mkdtemp(prefix=f"hf_{a.size}_")
    d, qdir = os.path.join(tmp, "hf"), os.path.join(tmp, "fpx")
    try:
        t0 = time.perf_counter()
        if not os.path.exists(os.path.join(d, "model.safetensors.index.json")):
            write_checkpoint(d, a.size)
        print(f"checkpoint at {d} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        rows = []
        for mode in ("hf", "prequantized"):
            js = os.path.join(tmp, f"{mode}.json")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--fmt", a.fmt, "--out", js, "--_measure", mode, d, qdir, js], check=True)
            with open(js) as f:
                rows.append(json.load(f))
            print(json.dumps(rows[-1]), file=sys.stderr)
        rows[0]["checkpoint_GiB"] = sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)) / 2**30
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"size": a.size, "config": SIZES[a.size], "rows": rows}, f, indent=1)
    finally:
        if a.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
