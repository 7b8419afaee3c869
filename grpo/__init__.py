"""grpo-zero: R1-Zero-style GRPO on a base language model with rule rewards."""

__version__ = "0.1.0"
