"""Images on disk to (LR, HR) batches: imresize, datasets, prepare/download commands.

Public API (the cross-package contract):

* :func:`imresize` - MATLAB-compatible bicubic for numpy HWC arrays and torch (B)CHW tensors.
* :func:`read_image` / :func:`write_image` - 8-bit RGB image files (policy in :mod:`sr_data.io`).
* :func:`build_train_dataset` / :func:`build_eval_dataset` - named collections (:mod:`sr_data.datasets`).
* :class:`ImageReadError`, :class:`DataError` - errors naming the file or folder.

Names are imported lazily, so ``import sr_data`` (and the ``sr-data`` command's light paths)
do not pay for importing torch until a torch-using name is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sr_data.errors import DataError, ImageReadError

__version__ = "0.1.0"

_LAZY = {
    "build_eval_dataset": "sr_data.datasets",
    "build_train_dataset": "sr_data.datasets",
    "default_root": "sr_data.datasets",
    "open_store": "sr_data.datasets",
    "sample_images": "sr_data.datasets",
    "imresize": "sr_data.bicubic",
    "decode_image": "sr_data.io",
    "read_image": "sr_data.io",
    "write_image": "sr_data.io",
    "bicubic_downscale_uint8": "sr_data.transforms",
    "modcrop": "sr_data.transforms",
    "build_arbitrary_eval_dataset": "sr_data.arbitrary_scale",
    "build_continuous_train_dataset": "sr_data.arbitrary_scale",
}

__all__ = [
    "DataError",
    "ImageReadError",
    "bicubic_downscale_uint8",
    "build_arbitrary_eval_dataset",
    "build_continuous_train_dataset",
    "build_eval_dataset",
    "build_train_dataset",
    "decode_image",
    "default_root",
    "imresize",
    "modcrop",
    "open_store",
    "read_image",
    "sample_images",
    "write_image",
]

if TYPE_CHECKING:
    from sr_data.bicubic import imresize
    from sr_data.datasets import (
        build_eval_dataset,
        build_train_dataset,
        default_root,
        open_store,
        sample_images,
    )
    from sr_data.io import decode_image, read_image, write_image
    from sr_data.transforms import bicubic_downscale_uint8, modcrop


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sr_data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
