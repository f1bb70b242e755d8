"""The packed weight layout shared by Python, the CPU handler and the CUDA kernels.

Packed layout (LAYOUT_VERSION = 2)
==================================

Designed from the register backwards: every 32-bit word is built so that the bf16 pair a
Tensor Core fragment register needs falls out of it with one shift and one mask (often just
the mask), then one multiply that fixes the exponent bias.

Geometry. A Flax kernel ``(K=in_features, N=out_features)`` is handled as ``W[n, k]`` and
padded with zeros to ``N_pad = roundup(N, 16)`` rows and ``K_pad = roundup(K, max(64, group))``
columns, cut into *blocks* of 16 rows x 64 k = four 16-wide k-steps. ``data`` is
``uint32[N_pad/16, K_pad/64, bits, 32]`` flattened to ``[N_pad/16, K_pad/64, 32*bits]``: row
tiles outer, k blocks inner (a warp streams one contiguous run along K), and inside a block
word ``i`` of every lane together (``index = 32*i + lane``), so a warp reads each word index
as one 128-byte row: coalesced from global memory, bank-conflict-free from shared memory.

Registers. Lane ``l = 4g + t`` of a warp holds, for each k-step ``j`` (0..3) of the block, the
four A-fragment registers ``a`` (0..3) of ``mma.m16n8k16`` -- which is also the per-warp
register A operand of Hopper's ``wgmma`` -- in *natural* k order:
``register r = 4j + a`` holds rows ``g + 8*(a & 1)`` at ``k = 16j + 2t + 8*(a >> 1) + h`` in its
half ``h`` (h = 0 low 16 bits, h = 1 high). A half is a bf16 bit pattern with the code's sign
at bit 15 and its exponent+mantissa field at bits ``[7 - mbits, 7 + ebits)`` (exponent LSB
under bf16's exponent LSB), all other bits zero: the pattern reads as
``decode(code) * 2^(bias_fpx - 127)``, subnormal codes included, so a bf16x2 multiply by
``2^(127 - bias_fpx)`` yields the exact value. For f16 activations the exponent+mantissa
field moves up by 3 (f16's exponent LSB is bit 10) and the factor ``2^(15 - bias_fpx)`` is
folded into the float32 scale.

Recipe. The 16 registers of a lane (``2*bits`` data bits each) are stored in its ``bits``
words exactly, no padding: register ``r`` is the OR over its *pieces* ``(word, shift, mask)``
of ``(word[w] << shift) & mask`` (``shift < 0`` shifts right). :func:`recipe` builds the
pieces greedily (each piece covers as many of the register's bits as one shift of one word
can, preferring no shift), deterministically, for every format; the C++ code reads the same
table from a header this module writes at build time (``python jax_fpx/layout.py --header
FILE``), so the arrangement has one source. Decode cost per 16 weights (8 registers) into
bf16 pairs, integer/logic instructions (a piece = one AND or LOP3; a shifted window = one
shift; shared windows counted once), plus one bf16x2 multiply per register on the FMA pipe:

    ==========  =====  ============================  ===========================
    format      bits   int/logic ops per 16 weights  per weight
    ==========  =====  ============================  ===========================
    fp6_e3m2    6      21.0                          1.31
    fp6_e2m3    6      26.5                          1.66
    fp5_e2m2    5      26.5                          1.66
    fp4_e2m1    4      22.0                          1.38
    ==========  =====  ============================  ===========================

(``python jax_fpx/layout.py`` prints the table for every format.)

Scales. Per output channel: ``float32[N_pad, 1]``. Per group of ``group_size`` inputs:
``bfloat16[N_pad, K_pad/group]`` (2 bytes per group: 2.1% of the FP6 bytes at group 128),
rounded *up* to bfloat16 at quantize time so ``|w| / scale`` never exceeds the format's max,
and the codes are encoded against the stored scale. Padded rows have scale 1 and zero codes.
Dequantized ``W[n, k] = decode(code) * scale[n, k // group]``.
"""

from __future__ import annotations

import functools
import sys

LAYOUT_VERSION = 2
ROW_TILE = 16  # rows (output channels) per block: MMA M
K_BLOCK = 64  # k per block: four MMA k-steps
LANES = 32
REGS = 16  # fragment registers per lane per block (4 k-steps x 4)
BF16_EXP_LSB = 7
F16_EXP_LSB = 10

# Formats the layout covers: 1 + ebits + mbits in 3..8, ebits, mbits >= 1.
ALL_FORMATS = tuple((e, m) for bits in range(3, 9) for e in range(1, bits - 1) for m in [bits - 1 - e])


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


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


def scale_dtype(group_size: int | None) -> str:
    """Stored scale dtype: ``'float32'`` per channel, ``'bfloat16'`` per group."""
    return "float32" if group_size is None else "bfloat16"


def element_of(lane: int, reg: int, half: int) -> tuple[int, int]:
    """(row, k) inside the 16x64 block of the value in ``half`` of register ``reg`` of ``lane``."""
    g, t = lane >> 2, lane & 3
    j, a = reg >> 2, reg & 3
    return g + 8 * (a & 1), 16 * j + 2 * t + 8 * (a >> 1) + half


def field_bits(ebits: int, mbits: int, exp_lsb: int = BF16_EXP_LSB) -> tuple[int, int]:
    """(lowest bit, width) of the exponent+mantissa field inside a 16-bit half."""
    return exp_lsb - mbits, ebits + mbits


def register_mask(ebits: int, mbits: int) -> int:
    """The bits a register uses (bf16 placement): signs at 15/31, fields below them."""
    lo, width = field_bits(ebits, mbits)
    half = (1 << 15) | (((1 << width) - 1) << lo)
    return half | (half << 16)


def _shifted(word_bits: int, shift: int) -> int:
    return ((word_bits << shift) if shift >= 0 else (word_bits >> -shift)) & 0xFFFFFFFF


@functools.cache
def recipe(ebits: int, mbits: int) -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """Pieces ``(word, shift, mask)`` of each of the 16 registers (see the module docstring)."""
    bits = 1 + ebits + mbits
    full = register_mask(ebits, mbits)
    free = [0xFFFFFFFF] * bits
    used_windows: set[tuple[int, int]] = set()
    out = []
    for _ in range(REGS):
        need, pieces = full, []
        while need:
            best = None
            for w in range(bits):
                for s in range(-31, 32):
                    cover = _shifted(free[w], s) & need
                    if not cover:
                        continue
                    key = (bin(cover).count("1"), s == 0, (w, s) in used_windows, -w, -abs(s))
                    if best is None or key > best[0]:
                        best = (key, w, s, cover)
            _, w, s, cover = best
            free[w] &= ~_shifted(cover, -s) & 0xFFFFFFFF
            need &= ~cover
            used_windows.add((w, s))
            pieces.append((w, s, cover))
        out.append(tuple(pieces))
    assert not any(free), "recipe must use every bit"
    return tuple(out)


def decode_ops(ebits: int, mbits: int) -> float:
    """Integer/logic instructions per 16 weights to build the bf16 registers (see docstring)."""
    rec = recipe(ebits, mbits)
    windows = {(w, s) for reg in rec for (w, s, _) in reg if s != 0}
    pieces = sum(len(reg) for reg in rec)
    return (len(windows) + pieces) * 16 / (2 * REGS)


def write_header(path: str) -> None:
    """Writes the C++ header with LAYOUT_VERSION, the geometry and every format's recipe."""
    recs = {fm: recipe(*fm) for fm in ALL_FORMATS}
    max_pieces = max(len(reg) for rec in recs.values() for reg in rec)
    lines = [
        "// Generated by jax_fpx/layout.py (the layout's one source); do not edit.",
        "#pragma once",
        "#include <cstdint>",
        "namespace jax_fpx {",
        f"constexpr int kLayoutVersion = {LAYOUT_VERSION};",
        f"constexpr int kRowTile = {ROW_TILE};",
        f"constexpr int kKBlock = {K_BLOCK};",
        f"constexpr int kLanes = {LANES};",
        f"constexpr int kRegs = {REGS};",
        f"constexpr int kMaxPieces = {max_pieces};",
        "struct Piece { int word; int shift; uint32_t mask; };",
        "struct Recipe { int ebits; int mbits; Piece regs[kRegs][kMaxPieces]; };",
        "// Unused piece slots have mask 0. The initializer is a macro so device code can hold a copy.",
        "#define JAX_FPX_RECIPES_INIT {  \\",
    ]
    for (e, m), rec in recs.items():
        regs = []
        for reg in rec:
            ps = [f"{{{w}, {s}, 0x{mask:08X}u}}" for (w, s, mask) in reg]
            ps += ["{0, 0, 0u}"] * (max_pieces - len(reg))
            regs.append("{" + ", ".join(ps) + "}")
        lines.append(f"  {{{e}, {m}, {{" + ", ".join(regs) + "}}, \\")
    lines += [
        "}",
        "constexpr Recipe kRecipes[] = JAX_FPX_RECIPES_INIT;",
        f"constexpr int kNumRecipes = {len(recs)};",
        "}  // namespace jax_fpx",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "--header":
        write_header(argv[1])
        return
    for e, m in ALL_FORMATS:
        print(f"e{e}m{m}: {decode_ops(e, m):.1f} int/logic ops per 16 weights ({decode_ops(e, m) / 16:.2f} per weight)")


if __name__ == "__main__":
    _main(sys.argv[1:])
