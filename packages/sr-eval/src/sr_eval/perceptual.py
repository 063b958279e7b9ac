"""Perceptual metrics (LPIPS, DISTS, ...) through pyiqa, the optional ``perceptual`` extra.

pyiqa is imported only when a perceptual metric is asked for. Do not use pyiqa for PSNR/SSIM: its
defaults differ from the papers' convention (YIQ luma, no uint8 rounding; conventions.md section 6).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sr_eval.loading import EvalError

INSTALL_HINT = "perceptual metrics need pyiqa: pip install 'sr-eval[perceptual]' (or: uv pip install pyiqa)"


def _import_pyiqa():
    try:
        import pyiqa
    except ImportError as err:
        raise EvalError(INSTALL_HINT) from err
    return pyiqa


def perceptual_metrics(
    names: Sequence[str], device: torch.device | str = "cpu"
) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """{name: fn(sr, hr) -> (B,)} for full-reference pyiqa metrics (e.g. 'lpips', 'dists').

    sr, hr: (B, 3, H, W) float in [0, 1]. Raises :class:`EvalError` if pyiqa is missing or a name is
    unknown to it.
    """
    if not names:
        return {}
    pyiqa = _import_pyiqa()
    out = {}
    for name in names:
        try:
            metric = pyiqa.create_metric(name, device=torch.device(device), as_loss=False)
        except Exception as err:
            raise EvalError(f"pyiqa metric {name!r}: {err}") from err

        def fn(sr: torch.Tensor, hr: torch.Tensor, _m=metric) -> torch.Tensor:
            with torch.no_grad():
                return _m(sr.clamp(0, 1), hr.clamp(0, 1)).reshape(-1).float().cpu()

        out[name] = fn
    return out
