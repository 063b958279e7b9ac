"""nn.Module building blocks for SR transformers."""

__version__ = "0.1.0"
