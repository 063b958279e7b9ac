"""Whole SR networks, the model registry and checkpoint loading."""

from sr_models.checkpoint import CheckpointError, load_checkpoint, save_safetensors
from sr_models.registry import ModelEntry, create_model, get_entry, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ModelEntry",
    "__version__",
    "create_model",
    "get_entry",
    "list_models",
    "load_checkpoint",
    "register_model",
    "save_safetensors",
]
