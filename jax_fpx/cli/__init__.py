"""The command line (application code: nothing in the core imports it).

``python -m jax_fpx``          :mod:`jax_fpx.cli.demo`, the main job (model fidelity + timing)
``python -m jax_fpx bench``    :mod:`jax_fpx.cli.bench`, the GEMM benchmark (shapes: :mod:`jax_fpx.cli.shapes`)
``python -m jax_fpx quantize`` :mod:`jax_fpx.cli.quantize`, a Hugging Face checkpoint -> a pre-quantized one
``python -m jax_fpx generate`` :mod:`jax_fpx.cli.generate`, text generation (streams to stdout)
"""

from __future__ import annotations

import importlib.util
import sys

# Packages beyond the core's (jax, numpy, ml_dtypes, tqdm) that the model commands (demo, quantize,
# generate) import: the ``examples`` extra. ``bench`` needs none.
_EXAMPLES_EXTRA = ("flax", "safetensors", "tokenizers")


def _missing(command: str) -> list[str]:
    needs = () if command == "bench" else _EXAMPLES_EXTRA
    return [m for m in needs if importlib.util.find_spec(m) is None]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in ("quantize", "generate", "bench") else "demo"
    missing = _missing(command)
    if missing:
        what = "python -m jax_fpx" + ("" if command == "demo" else f" {command}")
        print(f"{what} needs {', '.join(missing)}: pip install 'jax_fpx[examples]'", file=sys.stderr)
        return 2
    if command in ("quantize", "generate"):
        return importlib.import_module(f"{__name__}.{command}").main(argv[1:])
    if command == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    from .demo import main as demo_main

    return demo_main(argv)
