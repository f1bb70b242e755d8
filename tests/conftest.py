"""Shared test setup.

* GPU tests (``@pytest.mark.gpu``) are skipped where JAX sees no GPU.
* Tests are grouped by concern with markers: ``app`` for the files in :data:`APP_TESTS`
  (examples, notebooks, CLI, benchmarks, model loading), ``unit`` for every other file (the
  library). ``pytest -m unit`` is the fast loop; ``pytest`` (README, ``.ci/run``) runs both.
"""

import jax
import pytest


def _has_gpu() -> bool:
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


HAS_GPU = _has_gpu()


APP_TESTS = frozenset(
    {"test_examples.py", "test_notebooks.py", "test_bench.py", "test_llama_tp.py", "test_cli_hf.py", "test_hf.py"}
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.app if item.path.name in APP_TESTS else pytest.mark.unit)
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
