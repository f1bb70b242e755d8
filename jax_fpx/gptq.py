"""GPTQ-style error-compensating quantization onto FPx grids (pure JAX, jit-compiled).

    H = x.T @ x                                       # (in, in) float32, summed over calibration tokens
    w = jax_fpx.quantize_gptq(kernel, H, "fp4_e2m1")  # an ordinary FPxWeight (same kernels, same layout)

The algorithm is GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers") with the integer grid replaced by the FPx grid that
:func:`jax_fpx.quantize` uses. With ``W`` the Flax kernel (rows = input features ``k``) and
``H = XᵀX + λ·mean(diag)·I`` (dampening), the input features are quantized one after the other;
the rounding error of feature ``k``, scaled by the inverse Hessian, is pushed onto the features
not quantized yet, which minimises ``‖X Ŵ − X W‖²`` greedily:

    U = chol(H⁻¹) (upper),   for k = 0..K-1:   q_k = Q(w_k),  e_k = (w_k − q_k) / U[k,k],
                                               w_j -= U[k,j] · e_k   for j > k

``Q`` is the exact quantizer of :func:`jax_fpx.quantize`: ``round_to_grid(w / s) * s`` with RNE,
saturation and ``s`` the *stored* scale (group scales rounded up to bfloat16 as in the layout),
and the values that were rounded are encoded and packed by the same path ``quantize`` uses, so
the codes are exactly the ones ``Q`` chose. Updates are applied lazily per block of columns
(one matmul per block), which changes nothing but float rounding.

Scales: per output channel they come from the whole original kernel (absmax / format max, or a
scale search weighted by ``diag(H)``); per group, by default each group's scale is chosen when
the algorithm reaches the group's first input feature, on the already error-updated weights (as
in GPTQ), or up front from the original kernel (``static_groups=True``, forced by
``act_order=True`` since the packed layout stores groups in the original input order).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import validation
from .formats import FormatLike, FPxFormat, get_format
from .quantize import (
    ScaleSearch,
    _clamp_normal,
    _encode_pack,
    _padded_nk,
    _round_to_grid,
    _scales,
    _stored_scale,
)
from .weight import FPxWeight

__all__ = ["quantize_gptq", "GPTQ"]

_HIGHEST = lax.Precision.HIGHEST
#: At most this many column blocks per layer: each block is one unrolled loop in the compiled
#: program, so larger layers get larger blocks (results do not depend on the block size).
MAX_BLOCKS = 32
_CHOL_RETRIES = 6  # dampening x10 per retry when the Cholesky factorization fails


@dataclasses.dataclass(frozen=True)
class GPTQ:
    """Options of :func:`quantize_gptq` (and of ``quantize_params(..., method=GPTQ(...))``).

    Attributes:
      damp: dampening ``λ``: ``H + λ·mean(diag H)·I`` (GPTQ's ``percdamp``). If the Cholesky
        factorization still fails, ``λ`` is multiplied by 10 (up to 6 times).
      block_size: input features per lazy update (a performance knob only; enlarged so a layer
        has at most :data:`MAX_BLOCKS` blocks, and to a multiple of the group size).
      act_order: quantize input features in order of decreasing ``diag(H)`` (GPTQ's
        ``desc_act``); with groups the group scales are then static.
      static_groups: choose group scales up front from the original kernel instead of when the
        first feature of the group is reached.
      scale_search: ``None``/``False``: absmax scales. ``True`` or a :class:`ScaleSearch`: scales
        searched as in ``quantize(..., scale_search=...)``, weighted by ``diag(H)`` (the
        ``importance`` field is ignored): clipping chosen for the activations, rounding by GPTQ.
      scale_ratios: e.g. ``(0.8, 0.85, 0.9, 0.95, 1.0)``: run GPTQ once per multiple of the
        scales above and keep, for each output channel, the run with the smallest output error
        ``(w − q)ᵀ H (w − q)`` (exact per channel: GPTQ treats output channels independently).
        Costs one GPTQ pass per ratio. Empty (default): one pass.
      refit_scales: per-channel scales only: once the codes are fixed, set each output channel's
        scale to the one that minimizes its output error for those codes,
        ``s = gᵀ H w / gᵀ H g`` (``g`` the channel's grid values). The codes do not change; the
        error ``(w − s·g)ᵀ H (w − s·g)`` can only go down. On MiniLM (sequential GPTQ with
        act_order and scale_search, per channel) the embedding cosine moved e3m2 0.99699 -> 0.99700,
        e2m3 0.99866 -> 0.99872, e2m1 0.98266 -> 0.98216: a lower layer error is not always a
        better model, hence off by default.
    """

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    static_groups: bool = False
    scale_search: Union[None, bool, ScaleSearch] = None
    scale_ratios: tuple = ()
    refit_scales: bool = False

    def __post_init__(self):
        object.__setattr__(self, "scale_ratios", tuple(float(r) for r in self.scale_ratios))
        if any(not r > 0 for r in self.scale_ratios):
            raise ValueError(f"GPTQ scale_ratios must be positive, got {self.scale_ratios!r}")
        if not self.damp > 0:
            raise ValueError(f"GPTQ damp must be > 0, got {self.damp!r}")
        if int(self.block_size) < 1:
            raise ValueError(f"GPTQ block_size must be >= 1, got {self.block_size!r}")
        if not (self.scale_search is None or isinstance(self.scale_search, (bool, ScaleSearch))):
            raise TypeError(f"GPTQ scale_search must be None, a bool or a ScaleSearch, got {self.scale_search!r}")

    def search(self) -> Optional[ScaleSearch]:
        if self.scale_search is None or self.scale_search is False:
            return None
        return ScaleSearch() if self.scale_search is True else self.scale_search


def quantize_gptq(
    kernel: jax.Array,
    hessian: jax.Array,
    fmt: FormatLike = "fp6_e3m2",
    *,
    group_size: Optional[int] = None,
    **options: Any,
) -> FPxWeight:
    """Quantize a Flax kernel with GPTQ error compensation onto an FPx grid.

    Args:
      kernel: ``(in_features, out_features)`` float32/bfloat16/float16 (extra leading axes:
        stacked kernels, quantized one after the other).
      hessian: ``(in_features, in_features)`` float32 ``XᵀX`` of the layer's inputs summed over
        calibration tokens (leading axes matching ``kernel``'s); its overall scale does not
        matter. Features never active (zero diagonal) are rounded to nearest without feedback.
      fmt: FPx format, as for :func:`jax_fpx.quantize`.
      group_size: ``None`` (one scale per output channel) or a multiple of 64.
      **options: fields of :class:`GPTQ` (``damp``, ``block_size``, ``act_order``,
        ``static_groups``, ``scale_search``), or ``options=GPTQ(...)``.

    Returns:
      An :class:`FPxWeight` like :func:`jax_fpx.quantize`'s (same layout and scale dtype). With
      a diagonal ``hessian`` (no correlation between inputs) the codes are exactly those of
      ``quantize(kernel, fmt, group_size=group_size)``.
    """
    opts = options.pop("options", None)
    if opts is None:
        opts = GPTQ(**options)
    elif options:
        opts = dataclasses.replace(opts, **options)
    if not isinstance(opts, GPTQ):
        raise TypeError(f"options must be a GPTQ, got {type(opts).__name__}")
    fmt = get_format(fmt)
    kernel = jnp.asarray(kernel)
    hessian = jnp.asarray(hessian)
    if kernel.ndim < 2:
        raise ValueError(f"quantize_gptq expects a kernel of shape (in_features, out_features), got {kernel.shape}")
    _, _, group_size = validation.check_metadata(fmt, tuple(kernel.shape[-2:]), group_size, where="quantize_gptq")
    if not jnp.issubdtype(kernel.dtype, jnp.floating):
        raise TypeError(f"quantize_gptq expects a float kernel, got {kernel.dtype}")
    k_in, n_out = kernel.shape[-2:]
    if hessian.shape != kernel.shape[:-2] + (k_in, k_in):
        raise ValueError(
            f"hessian must have shape {kernel.shape[:-2] + (k_in, k_in)} (XᵀX of the layer inputs) for a kernel "
            f"of shape {kernel.shape}, got {hessian.shape}"
        )
    for name, a in (("kernel", kernel), ("hessian", hessian)):
        if not isinstance(a, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(a))):
            raise ValueError(f"{name} of shape {a.shape} contains NaN/Inf values; cannot quantize")
    data, scale = _gptq_jit(kernel, hessian.astype(jnp.float32), fmt, group_size, opts)
    return FPxWeight(data, scale, fmt, (k_in, n_out), group_size)


# --- implementation ----------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _gptq_jit(kernel, hessian, fmt: FPxFormat, group_size: Optional[int], opts: GPTQ):
    lead = kernel.shape[:-2]
    if not lead:
        return _gptq_one(kernel, hessian, fmt, group_size, opts)
    k2 = kernel.reshape(-1, *kernel.shape[-2:])
    h2 = hessian.reshape(-1, *hessian.shape[-2:])
    data, scale = lax.map(lambda a: _gptq_one(a[0], a[1], fmt, group_size, opts), (k2, h2))  # one layer at a time
    return data.reshape(*lead, *data.shape[1:]), scale.reshape(*lead, *scale.shape[1:])


def _prepare_hessian(hessian: jax.Array, k_pad: int, damp: float) -> tuple[jax.Array, jax.Array]:
    """Pads to ``k_pad`` (identity), fixes dead features, returns ``(H, λ0)`` with λ0 = damp·mean(diag)."""
    k = hessian.shape[-1]
    h = 0.5 * (hessian + hessian.T)
    h = jnp.pad(h, ((0, k_pad - k), (0, k_pad - k)))
    d = jnp.diagonal(h)
    live = d > 0
    mean_diag = jnp.sum(jnp.where(live, d, 0.0)) / jnp.maximum(jnp.sum(live), 1)
    mean_diag = jnp.where(mean_diag > 0, mean_diag, 1.0)
    # dead (or padded) features: no coupling, unit curvature -> plain rounding, no feedback
    h = jnp.where(live[:, None] & live[None, :], h, 0.0)
    h = h + jnp.diag(jnp.where(live, 0.0, mean_diag))
    return h, damp * mean_diag


def _inverse_cholesky_upper(h: jax.Array, lam0: jax.Array) -> jax.Array:
    """Upper ``U`` with ``UᵀU = (H + λI)⁻¹``; λ grows x10 until the factorization succeeds.

    ``H = V Vᵀ`` with ``V = U⁻¹`` upper triangular is the Cholesky factor of ``H`` with rows and
    columns reversed, so one Cholesky and one triangular solve give ``U`` (no explicit inverse).
    """
    eye = jnp.eye(h.shape[0], dtype=h.dtype)

    def attempt(lam):
        v = jnp.linalg.cholesky((h + lam * eye)[::-1, ::-1])[::-1, ::-1]  # upper, H + λI = V Vᵀ
        return lax.linalg.triangular_solve(v, eye, left_side=True, lower=False)

    def cond(c):
        i, _, u = c
        return (i < _CHOL_RETRIES) & ~jnp.all(jnp.isfinite(u))

    def body(c):
        i, lam, _ = c
        return i + 1, lam * 10.0, attempt(lam * 10.0)

    _, _, u = lax.while_loop(cond, body, (0, lam0, attempt(lam0)))
    return u


def _search_scale(slab: jax.Array, imp: jax.Array, fmt: FPxFormat, ss: ScaleSearch, group_size) -> jax.Array:
    """Stored scale per row of ``slab [N, g]`` minimising ``Σ imp·(Q(w) − w)²`` over multiples of absmax."""
    base = _scales(slab, fmt, None)[..., 0].astype(jnp.float32)  # [N] (per-channel rounding: f32)

    def err(scale):
        s = _stored_scale(_clamp_normal(scale), group_size)[:, None]
        q = _round_to_grid(slab / s, fmt) * s
        return jnp.sum(imp[None, :] * jnp.square(q - slab), axis=-1)

    def search(ratio_of, n, carry):
        def body(i, carry):
            best_r, best_e = carry
            r = jnp.maximum(ratio_of(i, best_r), 0.5 * ss.lo)
            e = err(base * r)
            better = e < best_e
            return jnp.where(better, r, best_r), jnp.where(better, e, best_e)

        return lax.fori_loop(0, n, body, carry)

    step = (ss.hi - ss.lo) / (ss.candidates - 1)
    carry = (jnp.ones_like(base), err(base))
    carry = search(lambda i, r: jnp.full_like(r, ss.lo + step * i), int(ss.candidates), carry)
    if ss.refine > 1:
        r1 = carry[0]
        carry = search(lambda i, r: r1 + step * (2.0 * i / (ss.refine - 1) - 1.0), int(ss.refine), carry)
    return _stored_scale(_clamp_normal(base * carry[0]), group_size)


def _choose_scale(slab, imp, fmt, ss, group_size) -> jax.Array:
    """Stored scale ``[N]`` of a ``[N, g]`` slab: absmax (as quantize) or searched."""
    if ss is None:
        scale = _stored_scale(_scales(slab, fmt, None)[..., 0], group_size)
    else:
        scale = _search_scale(slab, imp, fmt, ss, group_size)
    return scale.astype(jnp.float32)  # exact


def _blocks(k_pad: int, block_size: int, unit: int) -> list[tuple[int, int]]:
    b = max(int(block_size), math.ceil(k_pad / MAX_BLOCKS))
    b = -(-b // unit) * unit
    return [(s, min(s + b, k_pad)) for s in range(0, k_pad, b)]


def _gptq_one(kernel, hessian, fmt: FPxFormat, group_size: Optional[int], opts: GPTQ):
    wt = _padded_nk(kernel, group_size)  # [N_pad, K_pad] f32, zero padded
    n_pad, k_pad = wt.shape
    w = wt.T  # [K_pad, N_pad]: one row per input feature, the order GPTQ walks
    h, lam0 = _prepare_hessian(hessian, k_pad, float(opts.damp))
    diag = jnp.diagonal(hessian)
    imp = jnp.pad(jnp.maximum(diag, 0.0), (0, k_pad - diag.shape[0]))  # scale-search weights per feature
    ss = opts.search()
    gs = k_pad if group_size is None else group_size
    n_groups = k_pad // gs
    dynamic = group_size is not None and not (opts.act_order or opts.static_groups)

    if dynamic:
        static_scale = None
    else:  # [G, N] from the original kernel
        static_scale = jax.vmap(
            lambda g: _choose_scale(lax.dynamic_slice_in_dim(wt, g * gs, gs, axis=1), lax.dynamic_slice_in_dim(imp, g * gs, gs), fmt, ss, group_size)
        )(jnp.arange(n_groups))

    if opts.act_order:
        perm = jnp.argsort(-jnp.diagonal(h), stable=True)
        w, h = w[perm], h[perm][:, perm]
        group_of = perm // gs
    else:
        perm, group_of = None, jnp.arange(k_pad) // gs
    u = _inverse_cholesky_upper(h, lam0)

    blocks = _blocks(k_pad, opts.block_size, gs if dynamic else 1)

    def run(ratio):
        """One GPTQ pass with every scale multiplied by ``ratio``: (pre-rounding values, scales, w - q)."""
        w_ = w
        sscale = None if dynamic else _stored_scale(_clamp_normal(static_scale * ratio), group_size).astype(jnp.float32)
        pre_blocks, scale_blocks, d_blocks = [], [], []
        for b0, b1 in blocks:
            nb = b1 - b0
            blk, ub = w_[b0:b1], u[b0:b1, b0:b1]
            gidx = group_of[b0:b1]
            imp_b = imp[b0:b1] if perm is None else imp[perm[b0:b1]]

            def body(i, carry, ub=ub, gidx=gidx, imp_b=imp_b):
                blk, pre, err, cur, sc = carry
                row = blk[i]
                if dynamic:
                    def new_scale(blk=blk):
                        slab = lax.dynamic_slice_in_dim(blk, i, gs, axis=0).T
                        c = _choose_scale(slab, lax.dynamic_slice_in_dim(imp_b, i, gs), fmt, ss, group_size)
                        return _stored_scale(_clamp_normal(c * ratio), group_size).astype(jnp.float32)

                    cur = lax.cond(i % gs == 0, new_scale, lambda: cur)
                    sc = lax.dynamic_update_index_in_dim(sc, cur, i // gs, 0)
                    s = cur
                else:
                    s = sscale[gidx[i]]
                q = _round_to_grid(row / s, fmt) * s  # exactly what _encode_pack will encode
                e = (row - q) / ub[i, i]
                blk = blk - ub[i][:, None] * e[None, :]  # rows <= i untouched but row i (already recorded)
                return blk, pre.at[i].set(row), err.at[i].set(e), cur, sc

            zeros = jnp.zeros_like(blk)
            cur0 = jnp.ones((n_pad,), jnp.float32)
            sc0 = jnp.ones((max(nb // gs, 1) if dynamic else 1, n_pad), jnp.float32)
            _, pre, err, _, sc = lax.fori_loop(0, nb, body, (blk, zeros, zeros, cur0, sc0))
            pre_blocks.append(pre)
            scale_blocks.append(sc)
            d_blocks.append(w[b0:b1] - (pre - err * jnp.diagonal(ub)[:, None]))  # original w - q
            if b1 < k_pad:  # lazy update of every later feature: one matmul per block
                w_ = w_.at[b1:].add(-jnp.dot(u[b0:b1, b1:].T, err, precision=_HIGHEST))
        scale = jnp.concatenate(scale_blocks, axis=0) if dynamic else sscale  # [G, N]
        return jnp.concatenate(pre_blocks, axis=0), scale, jnp.concatenate(d_blocks, axis=0)

    if not opts.scale_ratios:
        pre, scale, _ = run(jnp.float32(1.0))
    else:  # output channels are independent in GPTQ: keep, per channel, the ratio with the least output error
        ratios = jnp.asarray(opts.scale_ratios, jnp.float32)

        def try_ratio(j, best):
            pre_j, scale_j, d = run(ratios[j])
            err = jnp.sum(jnp.dot(h, d, precision=_HIGHEST) * d, axis=0)  # dᵀ H d per output channel
            better = err < best[0]
            return (jnp.where(better, err, best[0]), jnp.where(better[None, :], pre_j, best[1]),
                    jnp.where(better[None, :], scale_j, best[2]))

        g_rows = n_groups if dynamic else static_scale.shape[0]
        init = (jnp.full((n_pad,), jnp.inf, jnp.float32), jnp.zeros((k_pad, n_pad), jnp.float32),
                jnp.ones((g_rows, n_pad), jnp.float32))
        _, pre, scale = lax.fori_loop(0, len(opts.scale_ratios), try_ratio, init)
    if perm is not None:
        pre = jnp.zeros_like(pre).at[perm].set(pre)
    if opts.refit_scales and group_size is None:
        pre, scale = _refit_channel_scales(pre, scale, wt.T, hessian, fmt)
    scale = scale.T  # [N_pad, G]
    scale = _stored_scale(scale, group_size)  # exact (already representable); sets the dtype
    return _encode_pack(pre.T, scale, fmt), scale


def _refit_channel_scales(pre, scale, w, hessian, fmt: FPxFormat):
    """Least-squares channel scales for fixed codes: ``pre``/``w`` ``[K_pad, N_pad]`` (values to
    encode / original kernel), ``scale`` ``[1, N_pad]``. Returns new (pre, scale) that encode to
    the same codes."""
    k_pad = pre.shape[0]
    k = hessian.shape[0]
    h = jnp.pad(hessian.astype(jnp.float32), ((0, k_pad - k), (0, k_pad - k)))
    g = _round_to_grid(pre / scale, fmt)  # [K_pad, N_pad] grid values (the codes)
    hg = jnp.dot(h, g, precision=_HIGHEST)
    num, den = jnp.sum(hg * w, axis=0), jnp.sum(hg * g, axis=0)
    fit = num / jnp.where(den > 0, den, 1.0)
    ok = (den > 0) & (fit > 0) & jnp.isfinite(fit)
    new = jnp.where(ok, _clamp_normal(fit), scale[0])[None, :]
    return g * new, new
