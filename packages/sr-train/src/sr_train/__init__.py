"""Optimizers, schedules, EMA, the training loop, presets; the sr-train command."""

__version__ = "0.1.0"
