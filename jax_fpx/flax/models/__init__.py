"""Example models used by the demo and examples/ (linen)."""
