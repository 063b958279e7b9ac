"""Error types of sr_data. Both subclass ValueError and name the offending file or folder."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataError", "ImageReadError"]


class DataError(ValueError):
    """A dataset, folder or packed file that cannot be used; the message names the path."""


class ImageReadError(DataError):
    """One image file that cannot be read as an 8-bit RGB image.

    Attributes:
        path: the file.
        reason: what is wrong, in a few words.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) across process boundaries (DataLoader workers)
        return (type(self), (self.path, self.reason))
