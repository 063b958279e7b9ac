"""Sparse gather-attention and graph-expansion ops (Triton on CUDA, PyTorch references elsewhere)."""

__version__ = "0.1.0"
