"""Self-describing, verified quantized checkpoints (safetensors and Orbax): round trips and every promised error."""

from __future__ import annotations

import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_fpx
from jax_fpx import layout
from jax_fpx.checkpoint import quantized as qc
from jax_fpx.checkpoint.checksum import checksum_hex
from jax_fpx.checkpoint.safetensors_io import CheckpointError, SafetensorsFile, save_file
from jax_fpx.models import hf, llama

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "hf")


def _params():
    k = jax.random.normal(jax.random.key(0), (100, 40))
    return {
        "a": {"kernel": jax_fpx.quantize(k, "fp5_e2m2", group_size=64)},
        "b": {"kernel": jax_fpx.quantize(k, "fp6_e3m2"), "bias": jnp.linspace(-1, 1, 40).astype(jnp.bfloat16)},
    }


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _same(x, y):
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checksum_detects_changes():
    a = jnp.arange(4096, dtype=jnp.uint32)
    base = checksum_hex(a)
    assert checksum_hex(a.at[17].set(a[17] ^ 1)) != base  # one bit
    assert checksum_hex(a.at[jnp.array([3, 4])].set(a[jnp.array([4, 3])])) != base  # swapped words
    assert checksum_hex(jnp.ones(5, jnp.bfloat16)) != checksum_hex(jnp.ones(5, jnp.float16))
    assert checksum_hex(np.asarray(a)) == base  # same value from host data


def test_safetensors_round_trip_and_header_errors(tmp_path):
    p = tmp_path / "x.safetensors"
    arrs = {"u": np.arange(10, dtype=np.uint32), "h": np.ones((2, 3), jnp.bfloat16)}
    save_file(p, {n: (a.dtype, a.shape, a) for n, a in arrs.items()}, {"k": "v"})
    with SafetensorsFile(p) as f:
        assert f.metadata == {"k": "v"} and f.info("h") == (np.dtype(jnp.bfloat16), (2, 3))
        np.testing.assert_array_equal(f.get("u"), arrs["u"])
        with pytest.raises(CheckpointError, match="no tensor 'zz'"):
            f.get("zz")
    raw = p.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:-4])
    with pytest.raises(CheckpointError, match="tensor 'h'.*truncated"):
        SafetensorsFile(tmp_path / "t.safetensors")
    (tmp_path / "s.safetensors").write_bytes(struct.pack("<Q", 10**9) + raw[8:])
    with pytest.raises(CheckpointError, match="header length"):
        SafetensorsFile(tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match="declared"):
        save_file(tmp_path / "w.safetensors", {"u": (np.uint32, (3,), np.zeros(4, np.uint32))})
    assert not (tmp_path / "w.safetensors").exists()


def test_safetensors_quantized_round_trip(tmp_path):
    p = _params()
    qc.save_quantized(tmp_path, p, source_config={"model_type": "x"})
    r, info = qc.load_quantized(tmp_path)
    _same(r, p)
    w = r["a"]["kernel"]
    assert w.fmt.name == "fp5_e2m2" and w.group_size == 64 and w.shape == (100, 40)
    assert w.scale.dtype == jnp.dtype(layout.scale_dtype(64))
    assert info["source_config"] == {"model_type": "x"}
    meta = SafetensorsFile(tmp_path / "model.safetensors").metadata
    assert meta["layout_version"] == str(layout.LAYOUT_VERSION)
    rec = json.loads(meta["params"])["a/kernel"]
    assert rec["fmt"] == "fp5_e2m2" and rec["group_size"] == 64 and rec["shape"] == [100, 40] and set(rec["checksum"]) == {"a/kernel.data", "a/kernel.scale"}


def _rewrite_meta(d, fn):
    """Rewrite model.safetensors with metadata changed by fn (tensors unchanged)."""
    path = os.path.join(d, "model.safetensors")
    with SafetensorsFile(path) as f:
        tensors = {n: (f.info(n)[0], f.info(n)[1], np.array(f.get(n))) for n in f.keys()}
        meta = dict(f.metadata)
    fn(meta, tensors)
    save_file(path, tensors, meta)


def test_safetensors_errors_name_the_tensor(tmp_path):
    p = _params()
    d = str(tmp_path / "q")
    qc.save_quantized(d, p)

    def layout_v1(meta, t):
        meta["layout_version"] = "1"

    _rewrite_meta(d, layout_v1)
    with pytest.raises(CheckpointError, match=r"layout v1.*re-quantize from the original weights"):
        qc.load_quantized(d)
    qc.save_quantized(d, p)

    def drop(meta, t):
        del t["b/kernel.scale"]

    _rewrite_meta(d, drop)
    with pytest.raises(CheckpointError, match=r"'b/kernel.scale'.*missing"):
        qc.load_quantized(d)
    qc.save_quantized(d, p)

    def reshape(meta, t):
        dt, shape, a = t["a/kernel.data"]
        t["a/kernel.data"] = (dt, (shape[0] * shape[1], shape[2]), a.reshape(-1, shape[2]))

    _rewrite_meta(d, reshape)
    with pytest.raises(CheckpointError, match=r"'a/kernel.data'.*fp5_e2m2 shape=\[100, 40\] group_size=64"):
        qc.load_quantized(d)
    qc.save_quantized(d, p)

    def wrong_fmt(meta, t):  # metadata says another format of the same width: shapes agree, checksums too
        recs = json.loads(meta["params"])
        recs["a/kernel"]["fmt"] = "fp5_e3m1"
        meta["params"] = json.dumps(recs)

    _rewrite_meta(d, wrong_fmt)
    target = {"a": {"kernel": jax_fpx.quantize(jnp.ones((100, 40)), "fp5_e2m2", group_size=64)}, "b": p["b"]}
    with pytest.raises(CheckpointError, match=r"'a/kernel'.*fp5_e3m1.*target wants fp5_e2m2"):
        qc.load_quantized(d, target=target)
    qc.save_quantized(d, p)
    # truncated file
    path = os.path.join(d, "model.safetensors")
    raw = _read(path)
    _write(path, raw[:-100])
    with pytest.raises(CheckpointError, match=r"tensor '.*' ends at byte .*truncated file"):
        qc.load_quantized(d)
    # flipped bytes in the data: the checksum names the tensor; verify=False loads it
    buf = bytearray(raw)
    _write(path, raw)
    with SafetensorsFile(path) as f:
        off = f._entries["b/kernel.data"][2]
    buf[off + 64: off + 128] = bytes(b ^ 0x5A for b in buf[off + 64: off + 128])
    _write(path, bytes(buf))
    with pytest.raises(CheckpointError, match=r"'b/kernel.data'.*checksum.*corrupted"):
        qc.load_quantized(d)
    r, _ = qc.load_quantized(d, verify=False)
    assert not np.array_equal(np.asarray(r["b"]["kernel"].data), np.asarray(p["b"]["kernel"].data))


def test_pre_quantized_model_loads_without_requantizing(tmp_path, monkeypatch):
    src = os.path.join(FIX, "qwen2")
    cfg, params = hf.load(src, fmt="fp6_e2m3", group_size=64)
    qc.save_quantized(tmp_path, params, source_config=hf.read_hf_config(src))
    monkeypatch.setattr(hf, "quantize", lambda *a, **k: pytest.fail("re-quantized"))
    cfg2, params2 = hf.load(tmp_path, fmt="fp4_e2m1")  # fmt ignored: the checkpoint keeps its formats
    assert cfg2 == cfg
    _same(params2, params)
    exp = np.load(os.path.join(FIX, "qwen2", "expected.npz"))
    tokens = llama.generate(params2, exp["prompts"], cfg2, 3)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(llama.generate(params, exp["prompts"], cfg, 3)))


def test_orbax_self_describing_and_verified(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    p = _params()
    qc.save_orbax(tmp_path / "ck", p)
    _same(qc.restore_orbax(tmp_path / "ck"), p)  # no target needed
    _same(qc.restore_orbax(tmp_path / "ck", target=p), p)
    k = jax.random.normal(jax.random.key(0), (100, 40))
    wrong = {"a": {"kernel": jax_fpx.quantize(k, "fp5_e3m1", group_size=64)}, "b": p["b"]}
    with pytest.raises(CheckpointError, match=r"'a/kernel'.*fp5_e2m2.*target wants fp5_e3m1"):
        qc.restore_orbax(tmp_path / "ck", target=wrong)
    grouped = {"a": {"kernel": jax_fpx.quantize(k, "fp5_e2m2")}, "b": p["b"]}
    with pytest.raises(CheckpointError, match=r"'a/kernel'.*group_size=64.*group_size=None"):
        qc.restore_orbax(tmp_path / "ck", target=grouped)
    # corrupt the stored bytes: the restore must fail, never return garbage
    files = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "ck" / "params") for f in fs]
    biggest = max(files, key=os.path.getsize)
    buf = bytearray(_read(biggest))
    mid = len(buf) // 2
    buf[mid: mid + 64] = bytes(b ^ 0xFF for b in buf[mid: mid + 64])
    _write(biggest, bytes(buf))
    with pytest.raises(Exception) as e:
        qc.restore_orbax(tmp_path / "ck")
    if isinstance(e.value, CheckpointError):
        assert "checksum" in str(e.value)


def test_unnamed_format_keeps_its_identity(tmp_path):
    from jax_fpx.formats import FPxFormat

    fmt = FPxFormat(4, 3)  # finite-max e4m3 (max 480), not the NaN-at-max fp8_e4m3 (max 448)
    assert fmt != jax_fpx.get_format("fp8_e4m3")
    p = {"l": {"kernel": jax_fpx.quantize(jax.random.normal(jax.random.key(1), (64, 16)), fmt)}}
    qc.save_quantized(tmp_path, p)
    r, _ = qc.load_quantized(tmp_path)
    assert r["l"]["kernel"].fmt == fmt
    _same(r, p)
