"""Images on disk to (LR, HR) batches: imresize, datasets, prepare/download commands."""

__version__ = "0.1.0"
