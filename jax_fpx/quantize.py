"""Pure-JAX quantize / pack / unpack / dequantize (jit-able; fast on GPU).

Encoding is round-to-nearest-even with saturation to the format's largest finite value,
computed exactly in float32 with power-of-two scalings. The bit packing follows the
layout documented in :mod:`jax_fpx.layout`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from . import layout, validation
from .packing import pack, unpack
from .formats import FormatLike, FPxFormat, get_format
from .weight import FPxWeight

__all__ = ["quantize", "ScaleSearch", "dequantize", "encode", "decode", "pack", "unpack"]

_FLOAT_KERNEL_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _round_magnitude(v: jax.Array, fmt: FPxFormat) -> jax.Array:
    """|v| rounded to the format's grid (RNE, saturating; NaN -> 0), exactly, in float32."""
    a = jnp.minimum(jnp.abs(v), fmt.max_value)
    a = jnp.where(jnp.isnan(a), 0.0, a)
    _, ex = jnp.frexp(a)  # a = f * 2**ex, f in [0.5, 1)
    e = jnp.maximum(ex - 1, fmt.min_normal_exp)  # binade (subnormals share the lowest)
    step_exp = e - fmt.mbits
    r = jnp.ldexp(jnp.round(jnp.ldexp(a, -step_exp)), step_exp)  # exact: power-of-two scaling
    return jnp.minimum(r, fmt.max_value)


def encode(v: jax.Array, fmt: FPxFormat) -> jax.Array:
    """float values -> uint32 codes (RNE, saturating). NaN encodes as 0 (callers reject it)."""
    v = jnp.asarray(v, jnp.float32)
    r = _round_magnitude(v, fmt)
    _, rex = jnp.frexp(r)
    big_e = jnp.where(r >= 2.0**fmt.min_normal_exp, rex - 1 + fmt.bias, 0)
    unit_exp = jnp.where(big_e == 0, fmt.min_normal_exp, big_e - fmt.bias) - fmt.mbits
    mant = jnp.ldexp(r, -unit_exp).astype(jnp.uint32) - jnp.where(big_e == 0, 0, 2**fmt.mbits).astype(jnp.uint32)
    sign = jnp.signbit(v).astype(jnp.uint32)
    return (sign << (fmt.bits - 1)) | (big_e.astype(jnp.uint32) << fmt.mbits) | mant


def decode(codes: jax.Array, fmt: FPxFormat) -> jax.Array:
    """uint32 codes -> float32 values (exact)."""
    codes = jnp.asarray(codes, jnp.uint32)
    big_e = ((codes >> fmt.mbits) & (2**fmt.ebits - 1)).astype(jnp.int32)
    mant = (codes & (2**fmt.mbits - 1)).astype(jnp.int32)
    sig = jnp.where(big_e == 0, mant, mant + 2**fmt.mbits).astype(jnp.float32)
    unit_exp = jnp.where(big_e == 0, fmt.min_normal_exp, big_e - fmt.bias) - fmt.mbits
    mag = jnp.ldexp(sig, unit_exp)
    return jnp.where((codes >> (fmt.bits - 1)) & 1 == 1, -mag, mag)


# --- quantize / dequantize ---------------------------------------------------------------
def _scales(wt: jax.Array, fmt: FPxFormat, group_size: Optional[int]) -> jax.Array:
    """wt [..., N_pad, K_pad] f32 -> scale [..., N_pad, G] f32 (absmax/max; zeros -> 1; non-finite -> NaN)."""
    *lead, n_pad, k_pad = wt.shape
    g = k_pad if group_size is None else group_size
    grouped = wt.reshape(*lead, n_pad, k_pad // g, g)
    amax = jnp.max(jnp.abs(grouped), axis=-1)
    finite = jnp.all(jnp.isfinite(grouped), axis=-1)
    scale = jnp.where(amax > 0, _clamp_normal(amax / fmt.max_value), 1.0)
    return _stored_scale(jnp.where(finite, scale, jnp.nan), group_size)


# float32's smallest normal. Scales never go below it: absmax / max would be subnormal (flushed to 0
# by XLA:CPU and most GPU math, zeroing the channel); clamped, the channel's codes go subnormal in
# the FPx format instead and keep every value the format can hold at that scale.
_F32_TINY = float(np.finfo(np.float32).tiny)


def _clamp_normal(scale: jax.Array) -> jax.Array:
    """Scale(s) raised to at least float32's smallest normal (NaN stays NaN)."""
    return jnp.maximum(scale, _F32_TINY)


def _stored_scale(scale: jax.Array, group_size: Optional[int]) -> jax.Array:
    """Scales in their stored dtype (``layout.scale_dtype``): group scales rounded *up* to
    bfloat16, so ``|w| / scale`` never exceeds the format's max; codes are then encoded
    against exactly this stored value."""
    scale = scale.astype(jnp.float32)
    if group_size is None:
        return scale
    b = scale.astype(jnp.bfloat16)
    up = jnp.nextafter(b, jnp.asarray(jnp.inf, jnp.bfloat16))
    return jnp.where(b.astype(jnp.float32) < scale, up, b)


def quantize(
    kernel: jax.Array,
    fmt: FormatLike = "fp6_e3m2",
    *,
    group_size: Optional[int] = None,
    scale_search: Union[None, bool, "ScaleSearch"] = None,
) -> FPxWeight:
    """Quantize a Flax-layout kernel to FPx.

    Args:
      kernel: ``(in_features, out_features)`` float32/bfloat16/float16 array; extra leading
        axes (stacked layers) are kept as batch axes of the result's leaves.
      fmt: format name (``'fp6_e3m2'`` default, ``'fp6_e2m3'``, ``'fp5_e2m2'``, ``'fp4_e2m1'``,
        ``'e4m3'``, ...), ``(ebits, mbits)`` or :class:`FPxFormat`.
      group_size: ``None`` for one scale per output channel, or a multiple of 64 for one
        scale per ``group_size`` input elements of each output channel.
      scale_search: ``None``/``False`` (default): scale = absmax / format max. ``True`` or a
        :class:`ScaleSearch`: per scale (channel or group), try ``candidates`` multiples
        ``r`` of the absmax scale in ``[lo, hi]`` (then ``refine`` finer ones around the best; ``r < 1`` clips the
        largest weights, ``r > 1`` moves values onto a better part of the non-uniform FP grid) and keep the one
        with the smallest squared weight error, weighted per input channel by
        ``ScaleSearch.importance`` if given (e.g. the mean squared activation of each input
        feature from a few calibration batches). Encoding is unchanged (RNE, saturating).

    Returns:
      :class:`FPxWeight` with packed ``uint32`` data and scales (``float32`` per channel,
      ``bfloat16`` per group; see :mod:`jax_fpx.layout`).

    Scales never go below float32's smallest normal (a tinier channel keeps its values in the
    format's subnormal codes instead of flushing to zero; float32 subnormal weights themselves
    are below what XLA:CPU's float32 arithmetic keeps and quantize to zero).

    Rounding is to nearest, ties to even, saturating at the format's max. NaN/Inf in a
    concrete kernel raise ``ValueError``. Under tracing (``jit``/``vmap``/Flax ``init``) the
    check cannot run: a channel (or group) containing NaN/Inf then gets a NaN scale, so
    every output that uses it is NaN -- visible, never silent garbage.
    """
    fmt = get_format(fmt)
    kernel = jnp.asarray(kernel) if not isinstance(kernel, jax.Array) else kernel
    if kernel.ndim < 2:
        raise ValueError(f"quantize expects a kernel of shape (in_features, out_features), got shape {kernel.shape}")
    _, _, group_size = validation.check_metadata(fmt, tuple(kernel.shape[-2:]), group_size, where="quantize")
    if kernel.dtype not in _FLOAT_KERNEL_DTYPES:
        raise TypeError(f"quantize expects a float32/bfloat16/float16 kernel, got {kernel.dtype}")
    if not isinstance(kernel, jax.core.Tracer):
        bad = ~jnp.isfinite(kernel)
        if bool(jnp.any(bad)):
            raise ValueError(
                f"kernel of shape {kernel.shape} contains {int(jnp.sum(bad))} NaN/Inf value(s); cannot quantize"
            )
    k_in, n_out = kernel.shape[-2:]
    if scale_search is None or scale_search is False:
        data, scale = _quantize_jit(kernel, fmt, group_size)
    else:
        ss = ScaleSearch() if scale_search is True else scale_search
        if not isinstance(ss, ScaleSearch):
            raise TypeError(f"scale_search must be None, a bool or a ScaleSearch, got {type(scale_search).__name__}")
        imp = jnp.ones((k_in,), jnp.float32) if ss.importance is None else jnp.asarray(ss.importance, jnp.float32)
        if imp.ndim < 1 or imp.shape[-1] != k_in:
            raise ValueError(f"ScaleSearch.importance must have shape (..., {k_in}), got {imp.shape}")
        data, scale = _quantize_search_jit(kernel, imp, fmt, group_size, int(ss.candidates), float(ss.lo), float(ss.hi), int(ss.refine))
    return FPxWeight(data, scale, fmt, (k_in, n_out), group_size)


def _round_to_grid(v: jax.Array, fmt: FPxFormat) -> jax.Array:
    """``decode(encode(v))`` without building codes (same RNE + saturation; for the scale search)."""
    r = _round_magnitude(v, fmt)
    return jnp.where(v < 0, -r, r)


@dataclasses.dataclass(frozen=True)
class ScaleSearch:
    """Options of ``quantize(..., scale_search=ScaleSearch(...))`` (see :func:`quantize`).

    Attributes:
      candidates: number of scale multiples tried, evenly spaced in ``[lo, hi]`` (>= 2).
      lo, hi: range of multiples of the absmax scale.
      refine: if > 1, a second pass tries ``refine`` multiples spanning one coarse step on
        either side of each scale's best (finer resolution for few extra evaluations).
      importance: optional ``(in_features,)`` (or ``(..., in_features)`` for stacked kernels)
        non-negative weights of each input feature in the squared-error objective.
    """

    candidates: int = 21
    lo: float = 0.5
    hi: float = 1.5
    refine: int = 11
    importance: Optional[Any] = None

    def __post_init__(self):
        if int(self.candidates) < 2 or not 0 < self.lo < self.hi:
            raise ValueError(f"ScaleSearch needs candidates >= 2 and 0 < lo < hi, got {self}")


def _padded_nk(kernel: jax.Array, group_size: Optional[int]) -> jax.Array:
    """``(..., K, N)`` kernel -> zero-padded float32 ``(..., N_pad, K_pad)``."""
    *lead, k_in, n_out = kernel.shape
    n_pad, k_pad = layout.padded_shape(k_in, n_out, group_size)
    wt = jnp.swapaxes(kernel.astype(jnp.float32), -1, -2)
    return jnp.pad(wt, [(0, 0)] * len(lead) + [(0, n_pad - n_out), (0, k_pad - k_in)])


def _encode_pack(wt: jax.Array, scale: jax.Array, fmt: FPxFormat) -> jax.Array:
    """Packed codes of ``wt / scale`` (wt ``[..., N_pad, K_pad]``, scale ``[..., N_pad, G]``)."""
    per_elem = jnp.repeat(scale.astype(jnp.float32), wt.shape[-1] // scale.shape[-1], axis=-1)
    codes = encode(jnp.where(jnp.isfinite(per_elem), wt / per_elem, 0.0), fmt)
    return pack(codes, fmt.ebits, fmt.mbits)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _quantize_search_jit(kernel, importance, fmt: FPxFormat, group_size, candidates: int, lo: float, hi: float, refine: int):
    k_in = kernel.shape[-2]
    wt = _padded_nk(kernel, group_size)
    k_pad = wt.shape[-1]
    imp = jnp.pad(importance, [(0, 0)] * (importance.ndim - 1) + [(0, k_pad - k_in)])
    base = _scales(wt, fmt, group_size)  # [..., N, G]
    n_groups = base.shape[-1]
    g = k_pad // n_groups
    wg = wt.reshape(*wt.shape[:-1], n_groups, g)
    ig = imp.reshape(*imp.shape[:-1], 1, n_groups, g)

    def err(scale):
        s = scale[..., None]
        q = _round_to_grid(jnp.where(jnp.isfinite(s), wg / s, 0.0), fmt) * s
        return jnp.sum(ig * jnp.square(q - wg), axis=-1)

    def search(ratio_of, n, carry):
        def body(i, carry):
            best_r, best_e = carry
            r = jnp.maximum(ratio_of(i, best_r), 0.5 * lo)
            e = err(_clamp_normal(base * r))
            better = e < best_e
            return jnp.where(better, r, best_r), jnp.where(better, e, best_e)

        return jax.lax.fori_loop(0, n, body, carry)

    step = (hi - lo) / (candidates - 1)
    carry = (jnp.ones_like(base), err(base))
    carry = search(lambda i, r: jnp.full_like(r, lo + step * i), candidates, carry)
    if refine > 1:  # second pass: `refine` ratios spanning +-1 coarse step around each best ratio
        r1 = carry[0]
        carry = search(lambda i, r: r1 + step * (2.0 * i / (refine - 1) - 1.0), refine, carry)
    scale = _stored_scale(_clamp_normal(base.astype(jnp.float32) * carry[0]), group_size)
    return _encode_pack(wt, scale, fmt), scale


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize_jit(kernel: jax.Array, fmt: FPxFormat, group_size: Optional[int]):
    wt = _padded_nk(kernel, group_size)
    scale = _scales(wt, fmt, group_size)
    return _encode_pack(wt, scale, fmt), scale


def dequantize(w: FPxWeight, dtype=jnp.float32) -> jax.Array:
    """Dense ``(..., in_features, out_features)`` kernel of ``w`` in ``dtype``."""
    if not isinstance(w, FPxWeight):
        raise TypeError(f"dequantize expects an FPxWeight, got {type(w).__name__}")
    w.check()
    return _dequantize_jit(w.data, w.scale, w.fmt, w.shape, dtype)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _dequantize_jit(data, scale, fmt, shape, dtype):
    k_in, n_out = shape
    vals = decode(unpack(data, fmt.ebits, fmt.mbits), fmt)  # [..., N_pad, K_pad]
    g = vals.shape[-1] // scale.shape[-1]
    vals = vals * jnp.repeat(scale.astype(jnp.float32), g, axis=-1)
    return jnp.swapaxes(vals[..., :n_out, :k_in], -1, -2).astype(dtype)
