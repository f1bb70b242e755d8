"""``python -m jax_fpx quantize`` / ``generate`` on the transformers fixtures (subprocesses, as a user runs them)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "llama")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, ok=True):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "jax_fpx", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _prompt_and_greedy():
    exp = np.load(os.path.join(FIX, "expected.npz"))
    words = lambda ids: " ".join("<s>" if i == 1 else f"w{i - 4}" for i in ids)  # the fixture tokenizer's vocabulary
    return words(exp["prompts"][0]), words(exp["greedy_f32"][0]), exp["greedy_f32"].shape[1]


def test_generate_dense_f32_matches_transformers_greedy():
    prompt, want, n = _prompt_and_greedy()
    r = _run("generate", "--model", FIX, "--prompt", prompt, "--max-new-tokens", str(n), "--fmt", "none", "--dtype", "float32", "--ignore-eos")
    assert r.stdout.strip() == want  # the generated text alone on stdout
    assert "tokens/s" in r.stderr and "peak memory" in r.stderr


def test_quantize_then_generate_from_prequantized(tmp_path):
    out = tmp_path / "fp6"
    r = _run("quantize", "--model", FIX, "--out", str(out))
    assert "peak memory: host" in r.stderr
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json"]
    prompt, want, n = _prompt_and_greedy()
    r = _run("generate", "--model", str(out), "--prompt", prompt, "--max-new-tokens", str(n), "--ignore-eos")
    got = r.stdout.strip().split()
    assert len(got) == n and got[0] == want.split()[0]  # FP6 + bf16: the first greedy token agrees


def test_sampling_in_process(capsys):
    from jax_fpx.cli import main

    assert main(["generate", "--model", FIX, "--prompt", "<s> w1 w2", "--max-new-tokens", "5", "--temperature", "0.8", "--top-p", "0.9",
                 "--ignore-eos", "--fmt", "fp5_e2m2", "--group-size", "64"]) == 0
    assert len(capsys.readouterr().out.split()) == 5


def test_cli_errors(tmp_path, capsys):
    from jax_fpx.cli import main

    assert main(["generate", "--model", str(tmp_path), "--prompt", "w1"]) == 2
    assert "tokenizer.json" in capsys.readouterr().err
    assert main(["quantize", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", FIX, "--prompt", "w1", "--top-p", "0"])
