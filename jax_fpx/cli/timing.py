"""The one wall-clock timer of the CLI, the benchmarks and the notebooks."""

from __future__ import annotations

import statistics
import time

import jax

__all__ = ["median_seconds"]


def median_seconds(fn, *args, warmup: int = 1, reps: int = 10) -> float:
    """Median wall time in seconds of ``fn(*args)`` (blocking on its result) over ``reps`` runs,
    after ``warmup`` untimed runs (compilation, caches)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)
