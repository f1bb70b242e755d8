"""GPTQ onto FPx grids: against an independent slow numpy implementation, and its contracts."""

import ml_dtypes
import numpy as np
import pytest

import jax
import jax.numpy as jnp

import jax_fpx
from jax_fpx import GPTQ, quantize_gptq


# --- independent reference (float64, unblocked, explicit inverse, grid by enumeration) --------
def _grid(fmt):
    """Non-negative values of the format, in code order (index parity = mantissa parity)."""
    f = jax_fpx.get_format(fmt)
    vals = [f.decode(c) for c in range(2 ** (f.bits - 1))]
    return np.array([v for v in vals if np.isfinite(v) and v <= f.max_value])


def _round_grid(v, grid):
    """Nearest grid value of |v| (ties to the even index), saturating; sign kept."""
    a = np.minimum(np.abs(v), grid[-1])
    i = np.clip(np.searchsorted(grid, a), 1, len(grid) - 1)
    lo, hi = grid[i - 1], grid[i]
    pick_hi = (a - lo > hi - a) | ((a - lo == hi - a) & (i % 2 == 0))
    r = np.where(pick_hi, hi, lo)
    r = np.where(a <= grid[0], grid[0], r)
    return np.where(v < 0, -r, r)


def _scale(col_block, fmt, grouped):
    """absmax / max in float32 (zeros -> 1); group scales rounded up to bfloat16."""
    f = jax_fpx.get_format(fmt)
    amax = np.abs(col_block).max(axis=0).astype(np.float32)
    s = np.where(amax > 0, amax / np.float32(f.max_value), np.float32(1)).astype(np.float32)
    s = np.maximum(s, np.finfo(np.float32).tiny)
    if grouped:
        b = s.astype(ml_dtypes.bfloat16)
        up = np.nextafter(b, np.array(np.inf, ml_dtypes.bfloat16))
        s = np.where(b.astype(np.float32) < s, up, b).astype(np.float32)
    return s.astype(np.float64)


def gptq_numpy(w, h, fmt, group_size=None, damp=0.01, act_order=False):
    """Textbook GPTQ, one input feature at a time. Returns (grid values w/s [K, N], scales [G, N])."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    k, n = w.shape
    grid = _grid(fmt)
    d = np.diag(h).copy()
    live = d > 0
    mean = d[live].mean() if live.any() else 1.0
    h[~live, :] = 0
    h[:, ~live] = 0
    h[np.arange(k), np.arange(k)] += np.where(live, 0.0, mean) + damp * mean
    gs = k if group_size is None else group_size
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    static = group_size is None or act_order
    if static:
        scales = np.stack([_scale(w[g : g + gs], fmt, group_size is not None) for g in range(0, k, gs)])
    else:
        scales = np.zeros((-(-k // gs), n))
    wp, hp = w[perm], h[perm][:, perm]
    u = np.linalg.cholesky(np.linalg.inv(hp)).T  # upper, UᵀU = H⁻¹
    codes = np.zeros_like(wp)
    for j in range(k):
        orig = perm[j]
        if not static and orig % gs == 0:
            scales[orig // gs] = _scale(wp[j : j + gs], fmt, True)
        s = scales[orig // gs]
        g = _round_grid(wp[j] / s, grid)
        codes[j] = g
        e = (wp[j] - g * s) / u[j, j]
        wp[j + 1 :] -= np.outer(u[j, j + 1 :], e)
    out = np.zeros_like(codes)
    out[perm] = codes
    return out, scales


def _grid_values(q):
    """The FPx grid value of every weight of an FPxWeight (dequantized / scale), [K, N]."""
    deq = np.asarray(jax_fpx.dequantize(q), np.float64)
    k = deq.shape[0]
    s = np.asarray(q.scale.astype(jnp.float32), np.float64)[: deq.shape[1]]  # [N, G]
    per = np.repeat(s, q.padded_shape[1] // s.shape[1], axis=1)[:, :k].T
    return _round_grid(deq / per, _grid(q.fmt)), s.T  # deq / s is within an ulp of the grid value


def _problem(k, n, seed=0, tokens=512):
    rng = np.random.RandomState(seed)
    mix = rng.randn(k, k) / np.sqrt(k) + np.eye(k)
    x = (rng.randn(tokens, k) * rng.uniform(0.2, 3, k)) @ mix  # correlated, uneven features
    w = rng.randn(k, n) * rng.uniform(0.5, 2, n)
    return w.astype(np.float32), (x.T @ x).astype(np.float32), x


@pytest.mark.parametrize(
    "fmt,group_size,act_order",
    [("fp6_e3m2", None, False), ("fp4_e2m1", None, False), ("fp5_e2m2", 64, False), ("fp6_e2m3", 64, True),
     ("fp4_e2m1", None, True)],
)
def test_matches_numpy_reference(fmt, group_size, act_order):
    w, h, _ = _problem(192, 40)
    q = quantize_gptq(w, h, fmt, group_size=group_size, act_order=act_order, block_size=64)
    got, got_s = _grid_values(q)
    want, want_s = gptq_numpy(w, h, fmt, group_size, act_order=act_order)
    assert np.mean(got == want) >= 0.99, np.mean(got == want)
    assert np.mean(np.isclose(got_s, want_s, rtol=1e-6)) >= 0.99


def test_diagonal_hessian_is_plain_quantize():
    rng = np.random.RandomState(1)
    for k, n, g in [(200, 70, None), (130, 33, 128)]:
        w = rng.randn(k, n).astype(np.float32)
        h = np.diag(rng.uniform(0.1, 2, k)).astype(np.float32)
        for fmt in ["fp6_e3m2", "fp4_e2m1"]:
            q, r = quantize_gptq(w, h, fmt, group_size=g), jax_fpx.quantize(w, fmt, group_size=g)
            assert q.scale.dtype == r.scale.dtype and q.shape == r.shape and q.group_size == r.group_size
            np.testing.assert_array_equal(np.asarray(q.data), np.asarray(r.data))
            np.testing.assert_array_equal(np.asarray(q.scale), np.asarray(r.scale))


@pytest.mark.parametrize("opts", [{}, {"act_order": True}, {"scale_search": True}, {"group_size": 64}])
def test_reduces_output_error(opts):
    w, h, x = _problem(256, 96, seed=2)
    q = quantize_gptq(w, h, "fp4_e2m1", **opts)
    r = jax_fpx.quantize(w, "fp4_e2m1", group_size=opts.get("group_size"))
    err = lambda qq: np.linalg.norm(x @ (np.asarray(jax_fpx.dequantize(qq)) - w))
    assert err(q) < 0.85 * err(r)


@pytest.mark.parametrize("group_size", [None, 64])
def test_scale_ratios_pick_the_best_run_per_channel(group_size):
    w, h, x = _problem(128, 48, seed=7)
    base = quantize_gptq(w, h, "fp4_e2m1", group_size=group_size)
    best = quantize_gptq(w, h, "fp4_e2m1", group_size=group_size, scale_ratios=(0.85, 0.9, 1.0))
    per_channel = lambda q: np.sum((x @ (np.asarray(jax_fpx.dequantize(q)) - w)) ** 2, axis=0)
    assert np.all(per_channel(best) <= per_channel(base) * (1 + 1e-4) + 1e-6)
    assert per_channel(best).sum() < per_channel(base).sum()
    with pytest.raises(ValueError, match="scale_ratios"):
        GPTQ(scale_ratios=(0.0,))


def test_dead_features_and_padding():
    w, h, _ = _problem(100, 20, seed=3)  # K=100 pads to 128, N=20 to 32
    h[5, :] = h[:, 5] = 0  # an input never seen in calibration
    q = quantize_gptq(w, h, "fp5_e2m2")
    got, _ = _grid_values(q)
    assert np.isfinite(np.asarray(jax_fpx.dequantize(q))).all()
    want, _ = gptq_numpy(w, h, "fp5_e2m2")
    assert np.mean(got == want) >= 0.99
    np.testing.assert_array_equal(got[5], want[5])


def test_stacked_kernels_and_jit():
    w1, h1, _ = _problem(128, 32, seed=4)
    w2, h2, _ = _problem(128, 32, seed=5)
    q = quantize_gptq(np.stack([w1, w2]), np.stack([h1, h2]), "fp6_e3m2")
    assert q.batch_shape == (2,)
    for i, (w, h) in enumerate([(w1, h1), (w2, h2)]):
        one = quantize_gptq(w, h, "fp6_e3m2")
        np.testing.assert_array_equal(np.asarray(q.data[i]), np.asarray(one.data))
    jq = jax.jit(lambda w, h: quantize_gptq(w, h, "fp6_e3m2"))(w1, h1)
    np.testing.assert_array_equal(np.asarray(jq.data), np.asarray(quantize_gptq(w1, h1, "fp6_e3m2").data))


def test_singular_hessian_is_damped():
    rng = np.random.RandomState(6)
    x = rng.randn(8, 64).astype(np.float32)  # rank 8 << 64
    w = rng.randn(64, 16).astype(np.float32)
    q = quantize_gptq(w, x.T @ x, "fp4_e2m1", damp=1e-9)
    assert np.isfinite(np.asarray(jax_fpx.dequantize(q))).all()


def test_errors():
    w, h, _ = _problem(64, 16)
    with pytest.raises(ValueError, match="hessian must have shape"):
        quantize_gptq(w, h[:10, :10], "fp6_e3m2")
    with pytest.raises(ValueError, match="NaN"):
        quantize_gptq(w, np.full_like(h, np.nan), "fp6_e3m2")
    with pytest.raises(ValueError, match="group_size"):
        quantize_gptq(w, h, "fp6_e3m2", group_size=48)
    with pytest.raises(TypeError):
        quantize_gptq(w, h, "fp6_e3m2", bogus=1)
    with pytest.raises(ValueError, match="damp"):
        GPTQ(damp=0)
    q = quantize_gptq(w, h, "fp6_e3m2", options=GPTQ(act_order=True), damp=0.05)
    assert isinstance(q, jax_fpx.FPxWeight)


@pytest.mark.parametrize("fmt", ["fp4_e2m1", "fp6_e3m2"])
def test_refit_scales_keeps_codes_and_lowers_each_channels_error(fmt):
    w, h, _ = _problem(192, 40, seed=5)
    a = quantize_gptq(w, h, fmt, act_order=True)
    b = quantize_gptq(w, h, fmt, act_order=True, refit_scales=True)
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    assert not np.array_equal(np.asarray(a.scale), np.asarray(b.scale))
    err = lambda q: (lambda d: np.sum((h @ d) * d, axis=0))(np.asarray(jax_fpx.dequantize(q), np.float64) - w)
    ea, eb = err(a), err(b)
    assert np.all(eb <= ea * (1 + 1e-5)) and eb.sum() < ea.sum()
    # group scales are left as they are
    g = quantize_gptq(w, h, fmt, group_size=64, refit_scales=True)
    np.testing.assert_array_equal(np.asarray(g.scale), np.asarray(quantize_gptq(w, h, fmt, group_size=64).scale))
