"""Building a model for the commands: registry name + checkpoint, with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn


class EvalError(ValueError):
    """A user-facing problem (bad file, weights or data); the message is one line; exit status 1."""


class UsageError(EvalError):
    """A bad or missing command-line argument; the message names the flag; exit status 2."""


# sr_models speaks Python (its messages are for its API); the commands speak flags.
_API_TO_FLAGS = [
    (re.compile(r"; pass name=$"), "; give --model (see --list-models)"),
    (re.compile(r"; pass scale=$"), "; give --scale"),
    (re.compile(r"but name=('[^']*') was requested"), r"but --model \1 was given"),
    (re.compile(r"is a x(\d+) checkpoint but scale=(\d+) was requested; pass allow_scale_transfer=True to resample "
                r"its upsampler \(fine-tuning start\)"),
     r"is a x\1 checkpoint but --scale \2 was given; leave --scale out to upscale x\1, or use x\2 weights"),
]


def cli_words(msg: str) -> str:
    """Rewrite sr_models' API wording (``pass name=``, ``allow_scale_transfer=True``) into flags."""
    for pattern, repl in _API_TO_FLAGS:
        msg = pattern.sub(repl, msg)
    return msg


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
        raise UsageError(f"--device {device!r}: {first_line(err)}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _create(name: str, scale: int) -> nn.Module:
    from sr_models import create_model

    try:
        return create_model(name, scale=scale)
    except ValueError as err:  # unknown name / unsupported scale: the registry's message names them
        raise UsageError(f"--model {name!r} --scale {scale}: {first_line(err)}") from err


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
    An unknown ``name`` or a missing weights file is a :class:`UsageError`.
    """
    if name is not None:
        from sr_models import list_models

        known = list_models()
        if name not in known:
            raise UsageError(f"--model {name!r}: unknown model; known models: {', '.join(known)}")
    if weights is None:
        if not allow_random_weights:
            raise UsageError(
                "--weights is required (a model with random weights produces noise); "
                "add --allow-random-weights to run one anyway, e.g. for testing"
            )
        if name is None:
            raise UsageError("--model is required when no --weights are given (see --list-models)")
        model = _create(name, 4 if scale is None else scale)
    else:
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"--weights {path}: " + ("is a folder, not a weights file" if path.is_dir() else "file not found"))
        try:
            from sr_models import load_checkpoint
        except ImportError as err:  # pragma: no cover - depends on sr_models' progress
            raise EvalError("this sr_models has no load_checkpoint; cannot read weights") from err
        try:
            model = load_checkpoint(path, name=name, scale=scale)
        except Exception as err:
            msg = cli_words(one_line(err))
            if str(path) not in msg:
                what = f"model {name!r}" if name else "a known model"
                msg = f"weights {path} do not match {what}" + (f" x{scale}" if scale else "") + f": {msg}"
            raise EvalError(msg) from err
    if scale is not None and getattr(model, "scale", scale) != scale:
        raise EvalError(f"weights {weights} are for scale x{model.scale}, but --scale {scale} was given; "
                        f"leave --scale out or use x{scale} weights")
    return model.to(device).eval()
