"""Hugging Face checkpoints -> jax_fpx Llama: checked against transformers' own outputs.

The fixtures (tests/fixtures/hf/*, made by tests/fixtures/make_hf_fixtures.py with transformers) hold
tiny random checkpoints of each architecture and transformers' logits / greedy tokens; the ``live``
tests recompute transformers' logits where it is importable.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fpx
from jax_fpx.checkpoint.safetensors_io import CheckpointError
from jax_fpx.flax.convert import fpx_dense_interceptor
from jax_fpx.flax.rules import QuantRule
from jax_fpx.models import hf, llama

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
ARCHS = ["llama", "llama_tied", "mistral", "qwen2"]


def _expected(name):
    return dict(np.load(os.path.join(FIX, name, "expected.npz")))


def _logits(cfg, params, prompts, impl="auto"):
    cache = llama.init_cache(cfg, prompts.shape[0], prompts.shape[1])
    with fpx_dense_interceptor(impl=impl):
        logits, _ = jax.jit(lambda p, t, c: llama.Llama(cfg).apply({"params": p}, t, 0, c))(params, jnp.asarray(prompts), cache)
    return np.asarray(logits)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", ARCHS)
def test_f32_matches_transformers(name):
    exp = _expected(name)
    cfg, params = hf.load(os.path.join(FIX, name), fmt=None, dtype="float32")
    assert not llama.is_quantized(params)
    assert _rel(_logits(cfg, params, exp["prompts"]), exp["logits_f32"]) < 1e-4
    steps = exp["greedy_f32"].shape[1]
    toks = llama.generate(params, exp["prompts"], cfg, steps - 1)
    np.testing.assert_array_equal(np.asarray(toks), exp["greedy_f32"])


@pytest.mark.parametrize("name", ARCHS)
def test_bf16_matches_transformers(name):
    exp = _expected(name)
    cfg, params = hf.load(os.path.join(FIX, name), fmt=None, dtype="bfloat16")
    got = _logits(cfg, params, exp["prompts"])
    assert _rel(got, exp["logits_bf16"]) < 3e-2  # bf16: 8 bits of mantissa through 2 layers
    assert np.mean(got.argmax(-1) == exp["logits_f32"].argmax(-1)) >= 0.9


@pytest.mark.parametrize("name", ARCHS)
def test_fp6_close_to_transformers(name):
    exp = _expected(name)
    cfg, params = hf.load(os.path.join(FIX, name), fmt="fp6_e3m2", dtype="bfloat16")
    flat = jax_fpx.checkpoint.quantized.flatten_params(params)
    assert isinstance(flat["layers_0/attn/wq/kernel"], jax_fpx.FPxWeight)
    assert not isinstance(flat["embed/embedding"], jax_fpx.FPxWeight)
    if not cfg.tie_embeddings:
        assert not isinstance(flat["lm_head/kernel"], jax_fpx.FPxWeight)  # default rules: lm_head dense
    got = _logits(cfg, params, exp["prompts"]).reshape(-1, cfg.vocab_size)
    ref = exp["logits_f32"].reshape(-1, cfg.vocab_size)
    cos = np.sum(got * ref, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= 0.99
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.9


def test_config_mapping():
    cfg = hf.config_from_hf(hf.read_hf_config(os.path.join(FIX, "qwen2")))
    assert cfg.qkv_bias and not cfg.o_bias and cfg.tie_embeddings and cfg.n_kv_heads == 2 and cfg.head_dim == 12
    cfg = hf.config_from_hf(hf.read_hf_config(os.path.join(FIX, "llama")))
    assert dict(cfg.rope_scaling)["rope_type"] == "llama3" and cfg.rope_theta == 500000.0 and not cfg.tie_embeddings
    assert hf.config_from_hf(hf.read_hf_config(os.path.join(FIX, "mistral"))).sliding_window == 6
    # transformers 4.x spelling of the same config
    old = {"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 16, "rope_theta": 1234.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    c = hf.config_from_hf(old)
    assert c.rope_theta == 1234.0 and dict(c.rope_scaling)["factor"] == 2.0 and c.n_kv_heads == 2
    with pytest.raises(CheckpointError, match="not supported"):
        hf.config_from_hf(dict(old, architectures=["GPT2LMHeadModel"], model_type="gpt2"))
    with pytest.raises(CheckpointError, match="yarn"):
        hf.config_from_hf(dict(old, rope_scaling={"type": "yarn", "factor": 4.0}))
    with pytest.raises(CheckpointError, match="already quantized.*gptq"):
        hf.config_from_hf(dict(old, quantization_config={"quant_method": "gptq"}))


def test_rules_mixed_formats(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {pattern: 'lm_head', fmt: none}\n"
        "  - {pattern: '/w2/kernel$', fmt: fp6_e2m3, group_size: 64}\n"
        "  - {pattern: '/attn/w[qk]/', fmt: fp8_e4m3}\n"
        "  - {pattern: '.*', fmt: fp5_e2m2}\n"
    )
    cfg, params = hf.load(os.path.join(FIX, "llama"), rules=str(rules))
    flat = jax_fpx.checkpoint.quantized.flatten_params(params)
    assert flat["layers_1/w2/kernel"].fmt.name == "fp6_e2m3" and flat["layers_1/w2/kernel"].group_size == 64
    assert flat["layers_0/attn/wq/kernel"].fmt.name == "fp8_e4m3"
    assert flat["layers_0/attn/wv/kernel"].fmt.name == "fp5_e2m2"
    assert not isinstance(flat["lm_head/kernel"], jax_fpx.FPxWeight)
    # the same rules through quantize_params on the dense tree give the same weights
    _, dense = hf.load(os.path.join(FIX, "llama"), fmt=None)
    q = jax_fpx.flax.quantize_params(dense, rules=str(rules))
    np.testing.assert_array_equal(np.asarray(q["layers_1"]["w2"]["kernel"].data), np.asarray(flat["layers_1/w2/kernel"].data))
    with pytest.raises(ValueError, match="group_size"):
        QuantRule(".*", "fp6_e3m2", group_size=48)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"pattern": "x", "format": "fp6_e3m2"}]))
    with pytest.raises(ValueError, match="unknown keys"):
        hf.load(os.path.join(FIX, "llama"), rules=str(bad))


def test_sharded_index_and_streaming_stats():
    stats = {}
    cfg, params = hf.load(os.path.join(FIX, "mistral"), stats=stats)  # 3 shards + index.json
    largest = max(int(np.prod(s)) for s in [(cfg.vocab_size, cfg.dim), (cfg.ffn_dim, cfg.dim)]) * 2
    assert stats["tensors"] == len(hf.param_map(cfg)) and stats["host_peak_tensor_bytes"] == largest


def _copy(name, tmp_path):
    d = tmp_path / name
    shutil.copytree(os.path.join(FIX, name), d)
    return d


def test_hf_bad_checkpoints(tmp_path):
    d = _copy("llama", tmp_path)
    # truncated file
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"truncated file"):
        hf.load(d)
    f.write_bytes(data)
    # shape mismatch between config.json and the tensors
    cfgj = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfgj, intermediate_size=96)))
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.(gate|up|down)_proj.weight.*shape"):
        hf.load(d)
    # missing tensors (config says 3 layers, the file has 2)
    (d / "config.json").write_text(json.dumps(dict(cfgj, num_hidden_layers=3)))
    with pytest.raises(CheckpointError, match=r"missing.*model.layers.2"):
        hf.load(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        hf.load(d)


def _live_transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ARCHS)
def test_live_transformers(name):
    transformers = _live_transformers()
    import torch

    exp = _expected(name)
    m = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(FIX, name), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = m(torch.tensor(exp["prompts"], dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ref, exp["logits_f32"], rtol=1e-5, atol=1e-5 * np.abs(ref).max())  # fixture still current
    cfg, params = hf.load(os.path.join(FIX, name), fmt=None, dtype="float32")
    assert _rel(_logits(cfg, params, exp["prompts"]), ref) < 1e-4
