"""Metrics, inference helpers, benchmark tables, profiling; the sr-eval and sr-upscale commands."""

__version__ = "0.1.0"
