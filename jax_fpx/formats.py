"""eXmY floating-point formats (pure Python, no JAX arrays).

A format has 1 sign bit, ``ebits`` exponent bits and ``mbits`` mantissa bits, exponent
bias ``2**(ebits-1) - 1`` and subnormals. Formats are finite-only ("fn"): every code is a
finite number, there is no inf. ``fp8_e4m3`` follows the OCP/ml_dtypes ``float8_e4m3fn``
convention where the all-ones code is NaN, so its largest finite value is 448; the
quantizer saturates there and never produces that code.

One identity per format: a name always means one exact format and a format always prints as a
name that maps back to it. ``(ebits, mbits)`` tuples and ``"eXmY"`` strings resolve to the named
format of that layout (``(4, 3)`` is ``fp8_e4m3``, NaN at all-ones, max 448, as
``ml_dtypes.float8_e4m3fn``); an ``FPxFormat`` whose NaN convention differs from its named
layout's carries it in its name: ``FPxFormat(4, 3)`` (every code finite, max 480) is
``fp8_e4m3_nonan``, ``FPxFormat(3, 2, nan_at_max=True)`` is ``fp6_e3m2_nan``.
"""

from __future__ import annotations

import dataclasses
from typing import Union

__all__ = ["FPxFormat", "FORMATS", "get_format", "FormatLike"]


@dataclasses.dataclass(frozen=True)
class FPxFormat:
    """A 1-sign, ``ebits``-exponent, ``mbits``-mantissa floating-point format.

    Attributes:
      ebits: exponent bits, >= 1.
      mbits: mantissa bits, >= 1.
      nan_at_max: the all-ones code is NaN (float8_e4m3fn style); the largest finite
        value is then one mantissa step below the all-ones value.
    """

    ebits: int
    mbits: int
    nan_at_max: bool = False

    def __post_init__(self):
        if not (isinstance(self.ebits, int) and isinstance(self.mbits, int)):
            raise TypeError(f"ebits and mbits must be ints, got {self.ebits!r}, {self.mbits!r}")
        if self.ebits < 1 or self.mbits < 1:
            raise ValueError(f"ebits and mbits must be >= 1, got e{self.ebits}m{self.mbits}")
        if not 3 <= self.bits <= 8:
            raise ValueError(
                f"1 + ebits + mbits must be in [3, 8], got {self.bits} for e{self.ebits}m{self.mbits}"
            )

    @property
    def bits(self) -> int:
        """Total bits per code (sign + exponent + mantissa)."""
        return 1 + self.ebits + self.mbits

    @property
    def bias(self) -> int:
        return 2 ** (self.ebits - 1) - 1

    @property
    def min_normal_exp(self) -> int:
        """Unbiased exponent of the smallest normal number (also the subnormal exponent)."""
        return 1 - self.bias

    @property
    def max_exp(self) -> int:
        return (2**self.ebits - 1) - self.bias

    @property
    def max_value(self) -> float:
        top_mantissa = 2**self.mbits - 1 - (1 if self.nan_at_max else 0)
        return float(2.0**self.max_exp * (1 + top_mantissa / 2**self.mbits))

    @property
    def smallest_subnormal(self) -> float:
        return float(2.0 ** (self.min_normal_exp - self.mbits))

    @property
    def name(self) -> str:
        """``fp{bits}_e{ebits}m{mbits}``, plus ``_nan`` / ``_nonan`` when the NaN convention is not
        the one of the named format of this layout (only ``fp8_e4m3`` has NaN at all-ones)."""
        base = f"fp{self.bits}_e{self.ebits}m{self.mbits}"
        if self.nan_at_max == _nan_by_default(self.ebits, self.mbits):
            return base
        return base + ("_nan" if self.nan_at_max else "_nonan")

    def decode(self, code: int) -> float:
        """Value of one code (python int in [0, 2**bits)); slow, for tests and docs."""
        if not 0 <= code < 2**self.bits:
            raise ValueError(f"code {code} out of range for {self.name}")
        sign = -1.0 if code >> (self.bits - 1) else 1.0
        e = (code >> self.mbits) & (2**self.ebits - 1)
        m = code & (2**self.mbits - 1)
        if self.nan_at_max and e == 2**self.ebits - 1 and m == 2**self.mbits - 1:
            return float("nan")
        if e == 0:
            return sign * m * 2.0 ** (self.min_normal_exp - self.mbits)
        return sign * (1 + m / 2**self.mbits) * 2.0 ** (e - self.bias)

    def __str__(self) -> str:
        return self.name


FORMATS: dict[str, FPxFormat] = {
    "fp6_e3m2": FPxFormat(3, 2),
    "fp6_e2m3": FPxFormat(2, 3),
    "fp5_e2m2": FPxFormat(2, 2),
    "fp5_e3m1": FPxFormat(3, 1),
    "fp4_e2m1": FPxFormat(2, 1),
    "fp8_e4m3": FPxFormat(4, 3, nan_at_max=True),
    "fp8_e5m2": FPxFormat(5, 2),
    "fp7_e3m3": FPxFormat(3, 3),
    "fp3_e1m1": FPxFormat(1, 1),
}

FormatLike = Union[str, FPxFormat, tuple]


def _nan_by_default(ebits: int, mbits: int) -> bool:
    """NaN convention of the named format of this layout (finite-only where none is named)."""
    return any(f.nan_at_max for f in FORMATS.values() if (f.ebits, f.mbits) == (ebits, mbits))


def get_format(fmt: FormatLike) -> FPxFormat:
    """Resolve a name ('fp6_e3m2', 'e3m2'), an (ebits, mbits) tuple or an FPxFormat."""
    if isinstance(fmt, FPxFormat):
        return fmt
    if isinstance(fmt, tuple) and len(fmt) == 2:
        e, m = int(fmt[0]), int(fmt[1])
        return FPxFormat(e, m, _nan_by_default(e, m))
    if isinstance(fmt, str):
        key = fmt.lower()
        if key in FORMATS:
            return FORMATS[key]
        for suffix, nan in (("_nonan", False), ("_nan", True)):
            if key.endswith(suffix):
                f = get_format(key[: -len(suffix)])
                return FPxFormat(f.ebits, f.mbits, nan)
        for f in FORMATS.values():
            if key == f"e{f.ebits}m{f.mbits}":
                return f
        if key.startswith("fp") and "_e" in key:  # e.g. fp6_e1m4
            body = key.split("_", 1)[1]
        else:
            body = key
        if body.startswith("e") and "m" in body:
            try:
                e, m = body[1:].split("m")
                f = FPxFormat(int(e), int(m))
            except ValueError as err:
                raise ValueError(f"unknown FPx format {fmt!r}") from err
            if key.startswith("fp") and not key.startswith(f"fp{f.bits}_"):
                raise ValueError(f"format name {fmt!r} has the wrong bit count (e{e}m{m} is fp{f.bits})")
            return f
        raise ValueError(f"unknown FPx format {fmt!r}; known: {sorted(FORMATS)} or 'eXmY'")
    raise TypeError(f"expected a format name, (ebits, mbits) or FPxFormat, got {type(fmt).__name__}")
