"""Model definitions the CLI, examples and notebooks run (Flax linen; application code, not the core).

``bert``: a small BERT encoder (all-MiniLM-L6-v2 weights); ``llama``: a Llama-style decoder.
"""
