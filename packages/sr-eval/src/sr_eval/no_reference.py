"""No-reference image quality metrics for real-world SR (NIQE, MUSIQ, MANIQA) through pyiqa.

Real-world test sets (RealSRSet ...) have no ground truth, so papers report no-reference scores of
the SR outputs. pyiqa (the optional ``perceptual`` extra of sr-eval) computes them; each needs a
parameter file that pyiqa would download on first use, which our machines cannot do. We therefore
always hand pyiqa the file (its ``pretrained_model_path``): the one given with
``--nr-weights NAME=PATH``, else the file pyiqa's own cache would hold
(``<torch hub dir>/pyiqa/<file>``). A file that is not there is a one-line error naming the file
and the option, raised before any model runs.

| metric | file pyiqa uses (default variant) | better |
|---|---|---|
| niqe | ``niqe_modelparameters.mat`` (the pristine MVG model of Mittal et al. 2012, MATLAB's) | lower |
| musiq | ``musiq_koniq_ckpt-e95806b9.pth`` (KonIQ-10k) | higher |
| maniqa | ``ckpt_koniq10k.pt`` (KonIQ-10k) | higher |

Checked with pyiqa 0.1.16 installed (``uv sync --all-packages --extra perceptual``), offline, on
2026-12-03: NIQE through this module gives 5.7318 on BasicSR's baboon.png (MATLAB's NIQE: 5.7296; pyiqa
takes Y of YIQ, MATLAB Y of YCbCr), with the .mat built from BasicSR's ``niqe_pris_params.npz``, and
``sr-eval --real --nr-metrics niqe`` writes its table. MUSIQ and MANIQA were not run (their files were
not available). MANIQA builds a timm ViT backbone that pyiqa may also try to download; give it a
populated timm/Hugging Face cache. The test suite uses a stand-in for pyiqa: the extra is not in the
default environment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sr_eval.loading import EvalError
from sr_eval.perceptual import _import_pyiqa

OPTION = "--nr-weights"


@dataclass(frozen=True)
class NoReferenceSpec:
    """What a no-reference metric needs: pyiqa's parameter file name and the score's direction."""

    file: str
    lower_better: bool


NO_REFERENCE: dict[str, NoReferenceSpec] = {
    "niqe": NoReferenceSpec("niqe_modelparameters.mat", lower_better=True),
    "musiq": NoReferenceSpec("musiq_koniq_ckpt-e95806b9.pth", lower_better=False),
    "maniqa": NoReferenceSpec("ckpt_koniq10k.pt", lower_better=False),
}


def pyiqa_cache_dir() -> Path:
    """Where pyiqa keeps downloaded parameter files: ``<torch.hub.get_dir()>/pyiqa``."""
    return Path(torch.hub.get_dir()) / "pyiqa"


def parse_weights(text: str | None) -> dict[str, str]:
    """``"niqe=a.mat,musiq=b.pth"`` -> ``{"niqe": "a.mat", "musiq": "b.pth"}``; EvalError naming the option."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise EvalError(f"{OPTION} {item!r}: expected NAME=PATH, e.g. {OPTION} niqe=/models/niqe_modelparameters.mat")
        out[name.strip().lower()] = path.strip()
    return out


def resolve_metric_file(name: str, given: str | None) -> Path:
    """The parameter file of metric ``name``: ``given`` if set, else pyiqa's cache; EvalError if absent."""
    spec = NO_REFERENCE[name]
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise EvalError(f"{OPTION} {name}={given}: file not found ({name} needs pyiqa's {spec.file})")
        return path
    path = pyiqa_cache_dir() / spec.file
    if not path.is_file():
        raise EvalError(f"no-reference metric {name!r} needs {spec.file}, not found at {path} (pyiqa's cache, "
                        f"which cannot be downloaded offline); pass {OPTION} {name}=PATH")
    return path


def no_reference_metrics(
    names: Sequence[str], device: torch.device | str = "cpu", weights: Mapping[str, str] | None = None,
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """{name: fn(img) -> (B,) float64 scores} for the no-reference metrics ``names``.

    img: ``(B, 3, H, W)`` float in [0, 1]. Files are checked before pyiqa is imported, so a missing
    one is reported even where pyiqa is absent. Raises :class:`EvalError` (one line) for an unknown
    name, a missing file, pyiqa missing, or a metric pyiqa cannot build.
    """
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        return {}
    weights = dict(weights or {})
    unknown = [n for n in names if n not in NO_REFERENCE]
    stray = [n for n in weights if n not in names]
    if unknown:
        raise EvalError(f"--nr-metrics: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(NO_REFERENCE)}")
    if stray:
        raise EvalError(f"{OPTION}: {', '.join(map(repr, stray))} not among --nr-metrics {','.join(names)}")
    files = {n: resolve_metric_file(n, weights.get(n)) for n in names}
    pyiqa = _import_pyiqa()
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for name in names:
        try:
            metric = pyiqa.create_metric(name, device=torch.device(device), as_loss=False,
                                         pretrained_model_path=str(files[name]))
        except Exception as err:  # pyiqa raises many kinds; report one line naming the metric and file
            raise EvalError(f"pyiqa metric {name!r} with {files[name]}: {str(err).splitlines()[0] if str(err) else err!r}") from err

        def fn(img: torch.Tensor, _m=metric) -> torch.Tensor:
            with torch.no_grad():
                return _m(img.float().clamp(0, 1)).reshape(-1).double().cpu()

        out[name] = fn
    return out
