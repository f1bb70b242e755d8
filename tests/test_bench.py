"""CPU smoke test of the GEMM benchmark (tiny cpu_smoke shapes)."""

from __future__ import annotations

import json

from jax_fpx import bench


def test_run_gemm_bench_smoke():
    shapes, batches = bench.load_shapes(smoke=True)
    rows = bench.run_gemm_bench(shapes[:1], batches[:1], ["xla_bf16", "fp6_e3m2", "xla_int8"], reps=1, warmup=1,
                                stream_bytes=1 << 16, max_weights=2, log=None)
    assert {r["method"] for r in rows} == {"xla_bf16", "fp6_e3m2", "xla_int8"}
    for r in rows:
        for key in ("method", "M", "K", "N", "us", "ratio_vs_xla_bf16", "weight_GBps", "device", "jax_version"):
            assert key in r
        assert r["us"] > 0


def test_bench_cli_writes_json(tmp_path):
    assert bench.main(["--smoke", "--methods", "xla_bf16,fp4_e2m1", "--reps", "1", "--batches", "1",
                       "--out", str(tmp_path), "--tag", "t"]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())
    assert rows and rows[0]["M"] == 1
