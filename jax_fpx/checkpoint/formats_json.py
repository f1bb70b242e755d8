"""An FPx format as JSON for checkpoint metadata and rules files (pure Python; no flax import)."""

from __future__ import annotations

from typing import Any, Optional

from ..formats import FORMATS, FPxFormat, get_format

__all__ = ["fmt_to_json", "fmt_from_json"]


def fmt_to_json(fmt: Optional[FPxFormat]) -> Any:
    """A format's name when the name maps back to the same format, else ``{"ebits", "mbits", "nan_at_max"}``."""
    if fmt is None:
        return None
    try:
        if any(f == fmt for f in FORMATS.values()) and get_format(fmt.name) == fmt:
            return fmt.name
    except (ValueError, KeyError, TypeError):
        pass
    return {"ebits": fmt.ebits, "mbits": fmt.mbits, "nan_at_max": bool(fmt.nan_at_max)}


def fmt_from_json(obj: Any) -> Optional[FPxFormat]:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return FPxFormat(int(obj["ebits"]), int(obj["mbits"]), bool(obj.get("nan_at_max", False)))
    return get_format(obj)
