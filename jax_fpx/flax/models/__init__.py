"""Moved to :mod:`jax_fpx.models` (kept so ``from jax_fpx.flax.models import llama`` still works)."""

import importlib


def __getattr__(name):
    if name in ("bert", "llama"):
        return importlib.import_module(f"jax_fpx.models.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
