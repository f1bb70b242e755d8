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
