"""Packed layout v2 (jax_fpx/layout.py): round trips, the register placement the kernels rely on,
and an independent numpy dequantize fuzzed against the library's (hypothesis)."""

import re
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jax
import jax.numpy as jnp

import jax_fpx
from jax_fpx import layout
from jax_fpx.formats import get_format
from jax_fpx.packing import pack, unpack

KERNEL_FORMATS = [(3, 2), (2, 3), (2, 2), (2, 1)]


@pytest.mark.parametrize("ebits,mbits", layout.ALL_FORMATS)
def test_pack_unpack_round_trip_every_format(ebits, mbits):
    bits = 1 + ebits + mbits
    rng = np.random.default_rng(bits * 10 + ebits)
    codes = rng.integers(0, 2**bits, (2, 48, 192), dtype=np.uint32)  # stacked
    data = pack(codes, ebits, mbits)
    assert data.shape == (2, 3, 3, 32 * bits) and data.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(unpack(data, ebits, mbits)), codes)


@pytest.mark.parametrize("ebits,mbits", layout.ALL_FORMATS)
def test_recipe_uses_every_bit_once(ebits, mbits):
    bits = 1 + ebits + mbits
    seen = [0] * bits
    for reg in layout.recipe(ebits, mbits):
        got = 0
        for w, s, mask in reg:
            src = (mask >> s) if s >= 0 else (mask << -s) & 0xFFFFFFFF
            assert seen[w] & src == 0
            seen[w] |= src
            assert got & mask == 0
            got |= mask
        assert got == layout.register_mask(ebits, mbits)
    assert seen == [0xFFFFFFFF] * bits


def _value(code: int, ebits: int, mbits: int) -> float:
    """An eXmY code's value from the definition (sign, biased exponent, subnormals)."""
    bias = 2 ** (ebits - 1) - 1
    sign = -1.0 if code >> (ebits + mbits) else 1.0
    e, m = (code >> mbits) & (2**ebits - 1), code & (2**mbits - 1)
    mag = (m / 2**mbits) * 2.0 ** (1 - bias) if e == 0 else (1 + m / 2**mbits) * 2.0 ** (e - bias)
    return sign * mag


def _numpy_registers(words: np.ndarray, ebits: int, mbits: int) -> np.ndarray:
    """[..., bits, 32] words -> [..., 32 lanes, 16] uint32 registers, straight from the recipe."""
    w = words.astype(np.uint64)
    regs = np.zeros(words.shape[:-2] + (32, 16), np.uint64)
    for r, pieces in enumerate(layout.recipe(ebits, mbits)):
        for word, s, mask in pieces:
            v = (w[..., word, :] << np.uint64(s)) if s >= 0 else (w[..., word, :] >> np.uint64(-s))
            regs[..., r] |= v & np.uint64(mask)
    return regs.astype(np.uint32)


@pytest.mark.parametrize("ebits,mbits", KERNEL_FORMATS)
def test_registers_are_bf16_pairs_of_the_values(ebits, mbits):
    """What the kernel does: each register, read as two bf16 and multiplied by 2^(127 - bias),
    is exactly the two weights of its fragment slot (ml_dtypes decodes the codes independently)."""
    fmt = get_format((ebits, mbits))
    bits = fmt.bits
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 2**bits, (16, 64), dtype=np.uint32)
    words = np.asarray(pack(codes, ebits, mbits))[0, 0].reshape(bits, 32)
    regs = _numpy_registers(words, ebits, mbits)  # [32, 16]
    halves = np.stack([regs & 0xFFFF, regs >> 16], -1).astype(np.uint16).view(ml_dtypes.bfloat16)
    vals = halves.astype(np.float64) * 2.0 ** (127 - fmt.bias)
    want = np.vectorize(lambda c: _value(int(c), ebits, mbits))(codes)
    for lane in range(32):
        for r in range(16):
            for h in range(2):
                row, k = layout.element_of(lane, r, h)
                assert vals[lane, r, h] == want[row, k], (lane, r, h)


def test_fragment_order_is_natural_k_of_mma_m16n8k16():
    # a0: (g, 2t..2t+1), a1: (g+8, ...), a2: (g, 2t+8..), a3: (g+8, 2t+8..), per 16-wide k-step j
    assert layout.element_of(4 * 3 + 2, 0, 0) == (3, 4)
    assert layout.element_of(4 * 3 + 2, 1, 1) == (11, 5)
    assert layout.element_of(4 * 3 + 2, 2, 0) == (3, 12)
    assert layout.element_of(4 * 3 + 2, 3 + 4 * 2, 1) == (11, 32 + 13)


def test_decode_op_budget():
    # layout v2's point: <= ~1.3 integer/logic ops per weight for the default format (v1: ~2.5)
    assert layout.decode_ops(3, 2) / 16 <= 1.32
    for e, m in KERNEL_FORMATS:
        assert layout.decode_ops(e, m) / 16 < 1.7


def test_header_written_from_the_same_recipe(tmp_path):
    path = tmp_path / "h.h"
    layout.write_header(str(path))
    text = path.read_text()
    assert f"kLayoutVersion = {layout.LAYOUT_VERSION};" in text
    w, s, mask = layout.recipe(3, 2)[12][0]
    assert f"{{{w}, {s}, 0x{mask:08X}u}}" in text


def numpy_dequantize(w) -> np.ndarray:
    """Independent dequantize: words -> registers (numpy, recipe) -> codes -> value from the
    format's definition -> scaled, float64, (in, out)."""
    fmt = w.fmt
    data = np.asarray(w.data)
    scale = np.asarray(w.scale.astype(jnp.float32), np.float64)
    nt, kb, _ = data.shape
    lo = layout.BF16_EXP_LSB - fmt.mbits
    regs = _numpy_registers(data.reshape(nt, kb, fmt.bits, 32), fmt.ebits, fmt.mbits)
    halves = np.stack([regs & 0xFFFF, regs >> 16], -1)  # [nt, kb, 32, 16, 2]
    codes = ((halves >> 15) << (fmt.bits - 1)) | ((halves >> lo) & ((1 << (fmt.bits - 1)) - 1))
    table = np.array([_value(c, fmt.ebits, fmt.mbits) for c in range(2**fmt.bits)])
    vals = table[codes]
    out = np.zeros((nt, kb, 16, 64), np.float64)
    for lane in range(32):
        for r in range(16):
            for h in range(2):
                row, k = layout.element_of(lane, r, h)
                out[:, :, row, k] = vals[:, :, lane, r, h]
    out = out.transpose(0, 2, 1, 3).reshape(nt * 16, kb * 64)
    g = out.shape[1] // scale.shape[1]
    out *= np.repeat(scale, g, axis=1)
    return out[: w.out_features, : w.in_features].T


@settings(max_examples=12, deadline=None)  # a compile per example
@given(
    fmt=st.sampled_from(["fp6_e3m2", "fp6_e2m3", "fp5_e2m2", "fp4_e2m1", "fp8_e4m3", "fp3_e1m1", "fp7_e3m3"]),
    k=st.integers(1, 150),
    n=st.integers(1, 40),
    grouped=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_dequantize_and_linear_against_numpy(fmt, k, n, grouped, seed):
    rng = np.random.default_rng(seed)
    kernel = (rng.standard_normal((k, n)) * rng.choice([1e-3, 1.0, 30.0])).astype(np.float32)
    w = jax_fpx.quantize(kernel, fmt, group_size=64 if grouped else None)
    ref = numpy_dequantize(w)
    np.testing.assert_array_equal(np.asarray(jax_fpx.dequantize(w), np.float64), ref.astype(np.float32))
    x = rng.standard_normal((3, k)).astype(np.float32)
    xb = jnp.asarray(x, jnp.bfloat16)
    want = np.asarray(xb, np.float64) @ ref
    got = np.asarray(jax.jit(jax_fpx.linear)(xb, w), np.float64)
    tol = 1e-2 * (np.abs(np.asarray(xb, np.float64)) @ np.abs(ref)) + 1e-30
    assert np.all(np.abs(got - want) <= tol)


def test_docstring_op_table_matches_decode_ops():
    """The op-count table at the top of layout.py is what decode_ops computes (one source)."""
    rows = re.findall(r"^\s+fp(\d)_e(\d)m(\d)\s+(\d)\s+([\d.]+)\s+([\d.]+)\s*$", layout.__doc__, re.M)
    assert len(rows) == 4
    for total, e, m, bits, per16, per_weight in rows:
        assert int(bits) == int(total) == 1 + int(e) + int(m)
        assert float(per16) == layout.decode_ops(int(e), int(m))
        assert float(per_weight) == round(layout.decode_ops(int(e), int(m)) / 16, 2)
