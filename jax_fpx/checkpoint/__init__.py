"""Checkpoint I/O: safetensors reading/writing, on-device checksums, self-describing pre-quantized checkpoints."""
