"""The packed weight layout shared by the CPU handler and the CUDA kernel.

Packed layout (LAYOUT_VERSION = 1)
==================================

A Flax kernel ``(K=in_features, N=out_features)`` is handled as ``W[n, k]`` (out x in) and
padded with zeros to ``N_pad = roundup(N, 16)`` rows and ``K_pad = roundup(K, max(64, group))``
columns. It is cut into *blocks* of 16 rows x 64 k: exactly the A operand of four Tensor
Core ``mma.m16n8k16`` k-steps (weights are the A operand, tokens the B operand, so one
MMA covers 16 output channels x 8 tokens).

``data``: ``uint32[N_pad/16, K_pad/64, 32*bits]``, row tiles outer, k blocks inner, so a warp
that owns a 16-row tile streams one contiguous run along K. Each block is ``128*bits``
bytes: for every *part* (below) ``32 lanes x p words``, lane-major, so lane ``l`` reads its
``p`` words with one aligned vector load (p=4: 16 B, p=2: 8 B, p=1: 4 B) and a warp's
loads of a part are one contiguous, coalesced run.

Which 32 values a lane holds: lane ``l = 4*g + t`` (g = l//4 "group", t = l%4) holds rows
``g`` and ``g+8`` of the block and the 16 contiguous k in ``[16t, 16t+16)``. Value index
``v = 4*z + beta`` (z in 0..7 "quad", beta in 0..3 byte) is element
``(row = g + 8*(beta//2), k = 16*t + 2*z + beta%2)``. For MMA k-step ``j`` the lane's A
registers are the quads ``z = 2j`` (a0..a3) and ``z = 2j+1`` (a4..a7) -- we permute k
inside the block (MMA k ``2t+{0,1}`` <-> real ``16t+4j+{0,1}``, MMA k ``2t+8+{0,1}`` <->
``16t+4j+2+{0,1}``) so that the matching B fragment of a lane is the 16 contiguous
activations ``x[token, 16t:16t+16]``: two 16-byte loads instead of eight 4-byte ones.

Parts (bit splitting in the spirit of FP6-LLM): a ``bits``-wide code is split by the
binary digits of ``bits``, widest first: 6 = 4+2, 5 = 4+1, 4 = 4, 3 = 2+1, 7 = 4+2+1,
8 = 8. The first part holds the top bits of the code (sign first). Part ``(o, p)`` (offset
``o`` bits from the top, width ``p``) holds ``(code >> (bits-o-p)) & (2**p-1)``. In a part
each 32-bit word holds ``Q = 8/p`` quads; quad ``z`` is in word ``z // Q`` at slot
``r = z % Q``, and the value of byte ``beta`` sits at bits ``[8*beta+8-p-p*r, +p)``. So

    U_z = OR over parts of ((word[z//Q] << (p*r)) & TOP_p) >> o,   TOP_p = top p bits of each byte

gives 4 codes top-aligned in the 4 bytes of one register (byte-parallel SIMT dequant:
one shift + one mask/or per part per 4 values), and one ``prmt`` per pair moves bytes
(0,1) / (2,3) to the top of the two fp16/bf16 halves of the A registers, where sign and
exponent/mantissa are put in place by shifts and masks (the exponent-bias correction is a
power of two folded into the per-row scale / one multiply).

``scale``: ``float32[N_pad, K_pad/group]`` (``[N_pad, 1]`` per channel); padded rows have
scale 1 and zero codes. Dequantized ``W[n, k] = decode(code) * scale[n, k // group]``.
"""

from __future__ import annotations

LAYOUT_VERSION = 1
ROW_TILE = 16  # rows (output channels) per block: MMA M
K_BLOCK = 64  # k per block: four MMA k-steps
LANES = 32


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def parts_for_bits(bits: int) -> list[tuple[int, int]]:
    """[(offset_from_top, width), ...] for a ``bits``-wide code, widest part first."""
    if bits == 8:
        return [(0, 8)]
    out, off = [], 0
    for w in (4, 2, 1):
        if bits & w:
            out.append((off, w))
            off += w
    return out


def padded_shape(in_features: int, out_features: int, group_size: int | None) -> tuple[int, int]:
    """(N_pad, K_pad) for a logical (in_features, out_features) kernel."""
    kmult = K_BLOCK if group_size is None else max(K_BLOCK, group_size)
    return round_up(max(out_features, 1), ROW_TILE), round_up(max(in_features, 1), kmult)


def data_shape(in_features: int, out_features: int, bits: int, group_size: int | None) -> tuple[int, int, int]:
    n_pad, k_pad = padded_shape(in_features, out_features, group_size)
    return n_pad // ROW_TILE, k_pad // K_BLOCK, LANES * bits


def scale_shape(in_features: int, out_features: int, group_size: int | None) -> tuple[int, int]:
    n_pad, k_pad = padded_shape(in_features, out_features, group_size)
    return n_pad, 1 if group_size is None else k_pad // group_size
