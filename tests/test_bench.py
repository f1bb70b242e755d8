"""CPU smoke test of the GEMM benchmark (tiny cpu_smoke shapes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from jax_fpx.cli import bench


def test_run_gemm_bench_smoke():
    shapes, batches = bench.load_shapes(smoke=True)
    rows = bench.run_gemm_bench(shapes[:1], batches[:1], ["xla_bf16", "fp6_e3m2", "xla_int8"], reps=1, warmup=1,
                                stream_bytes=1 << 16, max_weights=2, log=None)
    assert {r["method"] for r in rows} == {"xla_bf16", "fp6_e3m2", "xla_int8"}
    for r in rows:
        for key in ("method", "M", "K", "N", "us", "ratio_vs_xla_bf16", "weight_GBps", "device", "jax_version",
                    "call_overhead_us", "pct_read_floor"):
            assert key in r
        assert r["us"] > 0 and r["call_overhead_us"] > 0


def test_chain_feeds_each_gemm_the_previous_output():
    """The timed chain is dependent: its result is GEMM_L(...GEMM_1(x)) with resizes, not independent GEMMs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    ws = [jax.random.normal(jax.random.key(i), (6, 4)) for i in range(3)]
    chain, call_only = bench._chain_fns(lambda x, w: x @ w, 6)
    x = jnp.arange(12.0).reshape(2, 6) / 10
    want = x
    for w in ws:
        y = want @ w
        want = jnp.concatenate([y, y], axis=1)[:, :6]
    np.testing.assert_allclose(chain(x, ws), want, rtol=1e-5)
    np.testing.assert_allclose(call_only(x, ws), x + 1)


def test_cublas_rows_skip_without_torch_gpu():
    logs = []
    shapes, batches = bench.load_shapes(smoke=True)
    rows = bench.run_gemm_bench(shapes[:1], batches[:1], ["xla_bf16", "cublas_fp16"], reps=1, warmup=1,
                                stream_bytes=1 << 16, max_weights=2, log=logs.append)
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    assert any(r["method"] == "cublas_fp16" for r in rows) == gpu
    assert gpu or any("cublas_fp16: skipped" in line for line in logs)


def test_bench_cli_writes_json(tmp_path):
    assert bench.main(["--smoke", "--methods", "xla_bf16,fp4_e2m1", "--reps", "1", "--batches", "1",
                       "--out", str(tmp_path), "--tag", "t"]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())
    assert rows and rows[0]["M"] == 1


def test_tp_gemm_bench_on_two_fake_cpu_devices(tmp_path):
    """benchmarks/tp_gemm_bench.py (issue 9's sharded GEMM benchmark) runs and its sharded FP6 and
    bf16 results match the one-device ones."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "tp_gemm_bench.py"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = tmp_path / "tp.json"
    subprocess.run([sys.executable, str(script), "--shapes", "256x512", "--m", "2", "--reps", "1",
                    "--stream-bytes", str(1 << 16), "--out", str(out)], env=env, check=True, capture_output=True,
                   timeout=300)
    rows = json.loads(out.read_text())
    assert {(r["mode"], r["method"], r["devices"]) for r in rows} == {
        (mode, meth, d) for mode in ("column", "row") for meth in ("xla_bf16", "fp6_e3m2") for d in (1, 2)}
    for r in rows:
        assert r["us"] > 0 and r["ratio_vs_xla_bf16_same_sharding"] > 0
        # column parallel: same K reduction per output column -> identical; row parallel: partial sums
        # add in another order (|y| is O(1..10) here, a wrong shard would be off by that much)
        limit = 0.0 if r["mode"] == "column" else 0.25
        assert r["max_abs_diff_vs_one_device"] <= limit, r


def test_cli_names_the_extra_when_flax_is_missing(monkeypatch, capsys):
    """A bare `pip install jax_fpx` has no Flax: the demo says which extra to install; bench needs none."""
    import jax_fpx.cli as cli

    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name == "flax" else real(name, *a))
    assert cli.main([]) == 2 and cli.main(["generate", "--help"]) == 2
    assert "pip install 'jax_fpx[examples]'" in capsys.readouterr().err
    assert cli._missing("bench") == []
