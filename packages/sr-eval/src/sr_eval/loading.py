"""Building a model for the commands: registry name + checkpoint, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class EvalError(ValueError):
    """A user-facing problem (bad argument, file, weights or data); the message is one line."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (the class name if it has none)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


def one_line(err: BaseException, limit: int = 400) -> str:
    """All lines of an exception's message joined with '; ' (shortened to ``limit`` characters)."""
    parts = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = "; ".join(parts).replace(":;", ":") or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pick_device(device: str | None) -> torch.device:
    """'auto' / None -> cuda if available else cpu; otherwise the named device (validated)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise EvalError(f"--device {device!r}: {first_line(err)}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError(f"--device {device!r}: CUDA is not available on this machine")
    return dev


def _create(name: str, scale: int) -> nn.Module:
    from sr_models import create_model

    try:
        return create_model(name, scale=scale)
    except ValueError as err:  # unknown name / unsupported scale: the registry's message names them
        raise EvalError(first_line(err)) from err


def load_model(
    name: str | None,
    scale: int | None,
    weights: str | Path | None,
    *,
    allow_random_weights: bool = False,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The model in eval mode on ``device``.

    With ``weights``: ``sr_models.load_checkpoint(weights, name=name, scale=scale)``; any failure
    (missing file, wrong architecture, shape mismatch) becomes an :class:`EvalError` naming the file.
    Without: refused unless ``allow_random_weights`` (then a randomly initialised registry model).
    """
    if weights is None:
        if not allow_random_weights:
            raise EvalError(
                "--weights is required (a model with random weights produces noise); "
                "pass --allow-random-weights to run one anyway, e.g. for testing"
            )
        if name is None:
            raise EvalError("--model is required when no --weights are given")
        model = _create(name, 4 if scale is None else scale)
    else:
        path = Path(weights)
        if not path.is_file():
            raise EvalError(f"weights file not found: {path}")
        try:
            from sr_models import load_checkpoint
        except ImportError as err:  # pragma: no cover - depends on sr_models' progress
            raise EvalError("this sr_models has no load_checkpoint; cannot read weights") from err
        try:
            model = load_checkpoint(path, name=name, scale=scale)
        except Exception as err:
            msg = one_line(err)
            if str(path) not in msg:
                what = f"model {name!r}" if name else "a known model"
                msg = f"weights {path} do not match {what}" + (f" x{scale}" if scale else "") + f": {msg}"
            raise EvalError(msg) from err
    if scale is not None and getattr(model, "scale", scale) != scale:
        raise EvalError(f"weights {weights} are for scale x{model.scale}, but --scale {scale} was asked")
    return model.to(device).eval()
