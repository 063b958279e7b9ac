"""Errors raised by sr-train; the CLI prints each as one line and exits non-zero."""

from __future__ import annotations


class TrainError(Exception):
    """Base class of every error sr-train reports to the user as one line."""


class ConfigError(TrainError, ValueError):
    """A bad preset, config file, ``--set`` override or config value (the message names the key)."""


class ResumeError(TrainError, ValueError):
    """A checkpoint that cannot be resumed from (missing, corrupt, another model or scale)."""


class CheckpointWriteError(TrainError, OSError):
    """Writing a checkpoint failed (e.g. a full disk); the previous checkpoints are left intact."""


class MemoryCheckError(TrainError):
    """The pre-flight check found that one training step cannot fit the free memory (the message
    names the model, batch x patch, the estimate, the free memory and the fixes)."""
