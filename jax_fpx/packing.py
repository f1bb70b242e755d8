"""Bit packing of FPx codes into the layout of :mod:`jax_fpx.layout` (pure JAX, jit-able)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import layout

__all__ = ["pack", "unpack"]


@functools.cache
def _element_index() -> np.ndarray:
    """[32 lanes, 16 regs, 2 halves] -> row * 64 + k inside a 16x64 block."""
    idx = np.zeros((layout.LANES, layout.REGS, 2), np.int32)
    for lane in range(layout.LANES):
        for reg in range(layout.REGS):
            for half in range(2):
                row, k = layout.element_of(lane, reg, half)
                idx[lane, reg, half] = row * layout.K_BLOCK + k
    return idx


def _blocks(codes: jax.Array) -> jax.Array:
    """[..., N_pad, K_pad] -> [..., NT, KB, 16*64] (each block row-major)."""
    *lead, n_pad, k_pad = codes.shape
    nt, kb = n_pad // layout.ROW_TILE, k_pad // layout.K_BLOCK
    c = codes.reshape(*lead, nt, layout.ROW_TILE, kb, layout.K_BLOCK)
    c = jnp.swapaxes(c, -3, -2)
    return c.reshape(*lead, nt, kb, layout.ROW_TILE * layout.K_BLOCK)


def _unblocks(blocks: jax.Array) -> jax.Array:
    *lead, nt, kb, _ = blocks.shape
    c = blocks.reshape(*lead, nt, kb, layout.ROW_TILE, layout.K_BLOCK)
    c = jnp.swapaxes(c, -3, -2)
    return c.reshape(*lead, nt * layout.ROW_TILE, kb * layout.K_BLOCK)


def _shift(v: jax.Array, s: int) -> jax.Array:
    return v << np.uint32(s) if s >= 0 else v >> np.uint32(-s)


def pack(codes: jax.Array, ebits: int, mbits: int) -> jax.Array:
    """uint32 codes ``[..., N_pad, K_pad]`` -> packed data ``[..., N_pad/16, K_pad/64, 32*bits]``."""
    bits = 1 + ebits + mbits
    lo, _ = layout.field_bits(ebits, mbits)
    blocks = _blocks(jnp.asarray(codes, jnp.uint32))
    vals = jnp.take(blocks, _element_index(), axis=-1)  # [..., NT, KB, 32, 16, 2]
    sign = (vals >> np.uint32(bits - 1)) & np.uint32(1)
    field = vals & np.uint32((1 << (bits - 1)) - 1)
    halves = (sign << np.uint32(15)) | (field << np.uint32(lo))
    regs = halves[..., 0] | (halves[..., 1] << np.uint32(16))  # [..., NT, KB, 32, 16]
    words = [jnp.zeros(regs.shape[:-1], jnp.uint32) for _ in range(bits)]
    for r, pieces in enumerate(layout.recipe(ebits, mbits)):
        for w, s, mask in pieces:
            words[w] = words[w] | _shift(regs[..., r] & np.uint32(mask), -s)
    data = jnp.stack(words, axis=-2)  # [..., NT, KB, bits, 32]
    return data.reshape(*data.shape[:-2], bits * layout.LANES)


def unpack(data: jax.Array, ebits: int, mbits: int) -> jax.Array:
    """Inverse of :func:`pack`: ``[..., NT, KB, 32*bits]`` -> codes ``[..., N_pad, K_pad]``."""
    bits = 1 + ebits + mbits
    lo, _ = layout.field_bits(ebits, mbits)
    data = jnp.asarray(data, jnp.uint32)
    words = data.reshape(*data.shape[:-1], bits, layout.LANES)
    regs = []
    for pieces in layout.recipe(ebits, mbits):
        reg = jnp.zeros(words.shape[:-2] + (layout.LANES,), jnp.uint32)
        for w, s, mask in pieces:
            reg = reg | (_shift(words[..., w, :], s) & np.uint32(mask))
        regs.append(reg)
    regs = jnp.stack(regs, axis=-1)  # [..., 32, 16]
    halves = jnp.stack([regs & np.uint32(0xFFFF), regs >> np.uint32(16)], axis=-1)
    codes = ((halves >> np.uint32(15)) << np.uint32(bits - 1)) | (
        (halves >> np.uint32(lo)) & np.uint32((1 << (bits - 1)) - 1)
    )
    flat = codes.reshape(*codes.shape[:-3], layout.LANES * layout.REGS * 2)
    inv = np.argsort(_element_index().reshape(-1))
    return _unblocks(jnp.take(flat, inv, axis=-1))
