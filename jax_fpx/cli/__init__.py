"""The command line (application code: nothing in the core imports it).

``python -m jax_fpx``          :mod:`jax_fpx.cli.demo`, the main job (model fidelity + timing)
``python -m jax_fpx bench``    :mod:`jax_fpx.cli.bench`, the GEMM benchmark (shapes: :mod:`jax_fpx.cli.shapes`)
``python -m jax_fpx quantize`` :mod:`jax_fpx.cli.quantize`, a Hugging Face checkpoint -> a pre-quantized one
``python -m jax_fpx generate`` :mod:`jax_fpx.cli.generate`, text generation (streams to stdout)
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("quantize", "generate"):
        import importlib

        return importlib.import_module(f"{__name__}.{argv[0]}").main(argv[1:])
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    from .demo import main as demo_main

    return demo_main(argv)
