"""Formats and the scalar codec, bit-exact against ml_dtypes where it has the type."""

import ml_dtypes
import numpy as np
import pytest

import jax_fpx
from jax_fpx.formats import FPxFormat, get_format
from jax_fpx.quantize import decode, encode

ML_DTYPES = {
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
}


@pytest.mark.parametrize("name,maxval", [("fp6_e3m2", 28), ("fp6_e2m3", 7.5), ("fp5_e2m2", 7), ("fp4_e2m1", 6), ("fp8_e4m3", 448)])
def test_named_format_facts(name, maxval):
    f = get_format(name)
    assert f.max_value == maxval
    assert f.bias == 2 ** (f.ebits - 1) - 1
    assert f.name.startswith(f"fp{f.bits}_")


def test_format_parsing_and_errors():
    assert get_format("e3m2") == FPxFormat(3, 2)
    assert get_format((2, 3)) == FPxFormat(2, 3)
    assert get_format("fp6_e1m4") == FPxFormat(1, 4)
    with pytest.raises(ValueError, match="wrong bit count"):
        get_format("fp5_e3m2")
    with pytest.raises(ValueError, match=r"\[3, 8\]"):
        FPxFormat(5, 5)
    with pytest.raises(ValueError, match=">= 1"):
        FPxFormat(0, 3)
    with pytest.raises(ValueError, match="unknown"):
        get_format("int4")
    with pytest.raises(TypeError):
        get_format(3.5)


@pytest.mark.parametrize("name", sorted(ML_DTYPES))
def test_every_code_matches_ml_dtypes(name):
    f, t = get_format(name), ML_DTYPES[name]
    codes = np.arange(2**f.bits, dtype=np.uint8)
    want = codes.view(t).astype(np.float32)
    finite = ~np.isnan(want)
    got = np.asarray(decode(codes.astype(np.uint32), f))
    np.testing.assert_array_equal(got[finite], want[finite])
    np.testing.assert_array_equal(np.asarray(encode(want[finite], f)).astype(np.uint8), codes[finite])
    assert [f.decode(int(c)) for c in codes[finite]] == list(want[finite])


@pytest.mark.parametrize("name", sorted(ML_DTYPES))
def test_rounding_ties_and_random_match_ml_dtypes(name):
    f, t = get_format(name), ML_DTYPES[name]
    vals = np.unique(np.arange(2**f.bits, dtype=np.uint8).view(t).astype(np.float32))
    vals = vals[~np.isnan(vals)]
    mids = (vals[:-1] + vals[1:]) / 2  # exact ties: must round to the even code
    near = np.concatenate([mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    rnd = np.random.default_rng(0).uniform(-f.max_value, f.max_value, 20000).astype(np.float32)
    x = np.concatenate([near, rnd, [0.0, -0.0]]).astype(np.float32)
    x = x[np.abs(x) <= f.max_value]
    np.testing.assert_array_equal(np.asarray(encode(x, f)).astype(np.uint8), x.astype(t).view(np.uint8))


@pytest.mark.parametrize("fmt", [FPxFormat(e, m) for e in range(1, 7) for m in range(1, 7) if 3 <= 1 + e + m <= 8])
def test_generic_formats_round_trip_every_code(fmt):
    codes = np.arange(2**fmt.bits, dtype=np.uint32)
    vals = np.asarray(decode(codes, fmt))
    assert np.array_equal(vals, [fmt.decode(int(c)) for c in codes])
    back = np.asarray(encode(vals, fmt))
    # -0.0 and +0.0 keep their sign bit, so every code round-trips
    np.testing.assert_array_equal(back, codes)
    assert np.max(vals) == fmt.max_value


def test_saturation():
    f = get_format("fp6_e3m2")
    got = np.asarray(decode(encode(np.array([1e6, -1e6, 29.0, 30.0], np.float32), f), f))
    np.testing.assert_array_equal(got, [28, -28, 28, 28])


def test_public_exports():
    assert jax_fpx.FORMATS["fp6_e3m2"] == get_format("fp6_e3m2")


# --- one format identity (issue 16, item 4) -------------------------------------------------------
def test_tuple_resolves_to_the_named_format_and_variants_print_differently():
    import jax.numpy as jnp

    named = get_format("fp8_e4m3")
    assert get_format((4, 3)) == named == get_format("e4m3")  # a tuple means the named layout
    finite = FPxFormat(4, 3)  # every code a number: max 480, not ml_dtypes' float8_e4m3fn
    assert finite != named and finite.max_value == 480 and named.max_value == 448
    assert finite.name == "fp8_e4m3_nonan" and str(finite) != str(named)
    assert get_format(finite.name) == finite and get_format(named.name) == named
    assert FPxFormat(3, 2, nan_at_max=True).name == "fp6_e3m2_nan" == get_format("fp6_e3m2_nan").name
    for f in jax_fpx.FORMATS.values():  # every named format prints as its name
        assert get_format(f.name) == f and get_format((f.ebits, f.mbits)) == f
    # the named fp8_e4m3 is ml_dtypes.float8_e4m3fn, NaN at all-ones included
    codes = np.arange(256, dtype=np.uint8)
    want = codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    got = np.array([named.decode(int(c)) for c in codes], np.float32)
    np.testing.assert_array_equal(got, want)
    from jax_fpx.packing import unpack

    w = jax_fpx.quantize(jnp.full((64, 16), 3.0), (4, 3))  # absmax -> 448 (code 0x7E), never the NaN 0x7F
    assert "fp8_e4m3," in repr(w) and set(np.unique(np.asarray(unpack(w.data, 4, 3))[:16, :64]).tolist()) == {0x7E}
    w2 = jax_fpx.quantize(jnp.full((64, 16), 3.0), FPxFormat(4, 3))  # absmax -> 480: code 0x7F is a number
    assert "fp8_e4m3_nonan" in repr(w2) and set(np.unique(np.asarray(unpack(w2.data, 4, 3))[:16, :64]).tolist()) == {0x7F}


# --- tiny kernels keep their values (issue 16, item 3) --------------------------------------------
def _round_to_format64(v, fmt):
    """Nearest value of ``fmt``'s finite grid (float64, saturating; ties to the even code)."""
    values = (abs(fmt.decode(c)) for c in range(2 ** (fmt.bits - 1)))
    grid = np.array(sorted({v for v in values if np.isfinite(v)}))  # (the NaN code out before sorting)
    a = np.minimum(np.abs(v), grid[-1])
    i = np.clip(np.searchsorted(grid, a), 1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    pick_hi = (a - lo > hi - a) | ((a - lo == hi - a) & (i % 2 == 0))  # index i = code magnitude
    return np.sign(v) * np.where(pick_hi, hi, lo)


@pytest.mark.parametrize("name", sorted(jax_fpx.FORMATS))
def test_tiny_kernels_do_not_flush_to_zero(name):
    import jax

    fmt = get_format(name)
    tiny = float(np.finfo(np.float32).tiny)
    rng = np.random.RandomState(0)
    base = rng.uniform(-1, 1, (128, 16))
    base /= np.abs(base).max(axis=0, keepdims=True)  # every channel's absmax is exactly 1
    for absmax in (1e-30, 1e-33, 1e-36, 1e-37, 1e-38, 3e-39, 1e-40, 1e-42, 1e-45):
        k32 = (base * absmax).astype(np.float32)
        w = jax_fpx.quantize(jax.numpy.asarray(k32), fmt)
        got = np.asarray(jax_fpx.dequantize(w), np.float64)
        k64 = k32.astype(np.float64)
        amax = np.abs(k64).max(axis=0)
        scale = np.maximum(amax / fmt.max_value, tiny)  # float64: what the scale should be
        stored = np.asarray(w.scale, np.float64)[:16, 0]
        if absmax >= tiny:  # normal float32 kernels: the scale is exact and the values kept
            np.testing.assert_allclose(stored, scale, rtol=2**-23)
            assert np.any(got != 0)
        want = _round_to_format64(k64 / stored, fmt) * stored
        # float32 arithmetic (XLA:CPU flushes subnormals) cannot hold results below its smallest
        # normal; everything above it matches the float64 math of the same codes and scales.
        assert np.all(np.abs(got - want) <= tiny + 2**-22 * np.abs(want)), (name, absmax)
