"""GEMM benchmark shapes (the one copy in this repo; from the team's ``shared/bench/shapes.json``, 2026-11-26).

``y[M, N] = x[M, K] @ W[K, N]`` with W quantized; K = in_features, N = out_features. ``SMOKE_*`` is the tiny
CPU set. Shipped as a Python constant so ``python -m jax_fpx bench`` works from an installed wheel.
"""

BATCHES = [1, 4, 16, 64, 256, 1024]

SHAPES = [
    {"name": "llama70b_mlp_up", "K": 8192, "N": 28672},
    {"name": "llama70b_mlp_down", "K": 28672, "N": 8192},
    {"name": "llama70b_qkv", "K": 8192, "N": 10240},
    {"name": "llama70b_o", "K": 8192, "N": 8192},
    {"name": "llama8b_mlp_up", "K": 4096, "N": 14336},
    {"name": "llama8b_mlp_down", "K": 14336, "N": 4096},
    {"name": "odd_1000x3000", "K": 1000, "N": 3000},
    {"name": "minilm_ffn", "K": 384, "N": 1536},
]

SMOKE_BATCHES = [1, 16]
SMOKE_SHAPES = [{"name": "small", "K": 256, "N": 512}]
