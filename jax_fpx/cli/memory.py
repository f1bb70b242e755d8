"""Peak memory of this process (host RSS) and of the default device, for the CLI's reports."""

from __future__ import annotations

import resource
import sys
from typing import Optional

import jax


def host_peak_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def device_peak_bytes(device: Optional[jax.Device] = None) -> Optional[int]:
    """``peak_bytes_in_use`` of ``device`` (default: the first), or None where the backend has no stats (CPU)."""
    d = device or jax.devices()[0]
    try:
        stats = d.memory_stats()
    except Exception:  # noqa: BLE001 - backends without stats raise or return None
        return None
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def report() -> str:
    dev = device_peak_bytes()
    d = "n/a (no device memory stats on this backend)" if dev is None else f"{dev / 2**30:.3f} GiB"
    return f"peak memory: host {host_peak_bytes() / 2**30:.3f} GiB, device {d}"
