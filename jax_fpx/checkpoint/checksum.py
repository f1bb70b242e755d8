"""A cheap 64-bit checksum of a tensor's bytes, computed on the device that holds it.

Each element's bit pattern (widened to uint32) is mixed with its flat index by a multiply-xorshift
hash and the results are summed modulo 2**32, twice with different constants. Integer arithmetic
only, so the result is the same on every platform and reduction order; any single changed element
changes both sums, and swapped elements change them too (the index is hashed in). Not a
cryptographic hash: it detects corrupted or truncated-and-padded bytes, not tampering.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["checksum", "checksum_hex"]

_C = ((0x9E3779B1, 0x85EBCA77, 0x2C1B3C6D), (0xC2B2AE3D, 0x27D4EB2F, 0x165667B1))


def _words(x: jax.Array) -> jax.Array:
    x = jnp.ravel(x)
    size = jnp.dtype(x.dtype).itemsize
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    if size == 1:
        return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    raise TypeError(f"checksum: unsupported dtype {x.dtype}")


def _mix(h, c):
    h = h ^ (h >> 15)
    h = h * jnp.uint32(c)
    return h ^ (h >> 13)


@jax.jit
def checksum(x: jax.Array) -> jax.Array:
    """``uint32[2]`` checksum of ``x``'s bit patterns (any shape; dtypes of 1, 2, 4 or 8 bytes)."""
    w = _words(x)
    idx = jnp.arange(w.shape[0], dtype=jnp.uint32)
    out = []
    for a, b, c in _C:
        h = _mix(w * jnp.uint32(a) + (idx ^ jnp.uint32(b)) * jnp.uint32(c), b)
        out.append(jnp.sum(h, dtype=jnp.uint32))
    return jnp.stack(out)


def checksum_hex(x) -> str:
    """:func:`checksum` as a 16-digit hex string (computed where ``x`` lives; two integers come back)."""
    s = np.asarray(jax.device_get(checksum(x)), np.uint64)
    return f"{int(s[0]):08x}{int(s[1]):08x}"
