"""Checkpoint I/O (application code; the core never imports it).

``safetensors_io``: a memory-mapped safetensors reader/writer, one tensor at a time, errors naming the tensor.
``checksum``: a 64-bit checksum of a tensor's bytes computed on its device.
``quantized``: self-describing, verified pre-quantized checkpoints (safetensors and Orbax).
"""

from .checksum import checksum, checksum_hex
from .quantized import load_quantized, restore_orbax, save_orbax, save_quantized
from .safetensors_io import CheckpointError, SafetensorsFile, TensorDir, save_file

__all__ = [
    "CheckpointError",
    "SafetensorsFile",
    "TensorDir",
    "save_file",
    "checksum",
    "checksum_hex",
    "save_quantized",
    "load_quantized",
    "save_orbax",
    "restore_orbax",
]
