"""Whole SR networks, the model registry and checkpoint loading."""

from sr_models.registry import ModelEntry, create_model, get_entry, list_models, register_model

__version__ = "0.1.0"

__all__ = ["ModelEntry", "__version__", "create_model", "get_entry", "list_models", "register_model"]
