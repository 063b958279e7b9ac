"""Evaluate a model on benchmark datasets and render the paper-style table (markdown, CSV, JSON)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from sr_eval.inference import upscale_tensor
from sr_eval.metrics import mean_score, psnr_torch, ssim_torch
from sr_eval.paper_results import PaperRow

if TYPE_CHECKING:
    from sr_eval.runner import Upscaler

# Display names of the usual benchmark sets, in the papers' column order.
DISPLAY_NAMES = {
    "set5": "Set5",
    "set14": "Set14",
    "b100": "B100",
    "urban100": "Urban100",
    "manga109": "Manga109",
    "div2k-val": "DIV2K-val",
    "lsdir-val": "LSDIR-val",
}


@dataclass
class DatasetResult:
    """Scores of one model on one dataset: means of per-image values, plus the per-image values."""

    dataset: str
    num_images: int
    psnr: float
    ssim: float
    per_image: list[dict] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)  # perceptual metrics (means)


def align_hr(hr: torch.Tensor, sr_shape: Sequence[int], name: str) -> torch.Tensor:
    """Crop the HR top-left to the SR size, as BasicSR does at test time; error if HR is smaller."""
    h, w = sr_shape[-2:]
    if hr.shape[-2] < h or hr.shape[-1] < w:
        raise ValueError(f"{name}: HR {tuple(hr.shape[-2:])} is smaller than SR {(h, w)}; LR/HR pair mismatch")
    return hr[..., :h, :w]


@torch.no_grad()
def evaluate_dataset(
    model: nn.Module,
    dataset: Iterable[Mapping],
    *,
    name: str,
    crop_border: int,
    y_channel: bool = True,
    device: torch.device | str = "cpu",
    max_batch: int = 1,
    perceptual: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None,
    progress: Callable[[int], None] | None = None,
    upscaler: Upscaler | None = None,
    **upscale_kwargs,
) -> DatasetResult:
    """PSNR/SSIM (paper convention) of ``model`` on ``dataset``.

    ``dataset`` yields dicts {"lr": (3, h, w) float [0, 1], "hr": (3, H, W) float, "name": str}
    (sr_data.build_eval_dataset). Consecutive images of the same size are run as one batch of up to
    ``max_batch``. ``upscale_kwargs`` go to :func:`upscale_tensor` (tile, precision, self_ensemble...).
    ``perceptual`` maps a metric name to ``fn(sr, hr) -> (B,)`` on (B, 3, H, W) [0, 1] tensors.
    ``progress(n)`` is called after every batch with the number of images done in it.
    With an ``upscaler`` (:class:`sr_eval.runner.Upscaler`, memory-bounded: whole image when it
    fits, else tiles) it replaces ``upscale_kwargs``; a batch that does not fit whole is run image
    by image, and every per-image row records the ``tile`` used (None: whole image).
    """
    device = torch.device(device)
    per_image: list[dict] = []
    extra_vals: dict[str, list[float]] = {k: [] for k in (perceptual or {})}

    def run(batch: list[Mapping]) -> None:
        lr = torch.stack([b["lr"] for b in batch]).to(device)
        tiles: list[int | None] = [upscale_kwargs.get("tile")] * len(batch)
        if upscaler is None:
            sr = upscale_tensor(model, lr, **upscale_kwargs)
        elif len(batch) > 1 and upscaler.plan(*lr.shape[-2:], batch=len(batch)).tile is not None:
            for b in batch:  # the batch does not fit whole: one image at a time
                run([b])
            return
        else:
            names = ", ".join(str(b.get("name", "?")) for b in batch)
            try:
                sr, info = upscaler(lr, name=names)
            except ValueError as err:  # e.g. does not fit even in tiles: name the image and the dataset
                raise ValueError(f"{name}/{names}: {err}") from err
            tiles = [info.plan.tile] * len(batch)
        hr = torch.stack([align_hr(b["hr"], sr.shape, str(b.get("name", "?"))) for b in batch]).to(device)
        p = psnr_torch(sr, hr, crop_border=crop_border, y_channel=y_channel)
        s = ssim_torch(sr, hr, crop_border=crop_border, y_channel=y_channel)
        rows = [{"name": str(b.get("name", i)), "psnr": float(p[i]), "ssim": float(s[i]), "tile": tiles[i]}
                for i, b in enumerate(batch)]
        for key, fn in (perceptual or {}).items():
            vals = fn(sr, hr).reshape(-1).tolist()
            extra_vals[key].extend(vals)
            for r, v in zip(rows, vals, strict=True):
                r[key] = float(v)
        per_image.extend(rows)
        if progress is not None:
            progress(len(batch))

    pending: list[Mapping] = []
    for item in dataset:
        if pending and (
            len(pending) >= max_batch
            or tuple(item["lr"].shape) != tuple(pending[0]["lr"].shape)
            or tuple(item["hr"].shape) != tuple(pending[0]["hr"].shape)
        ):
            run(pending)
            pending = []
        pending.append(item)
    if pending:
        run(pending)
    if not per_image:
        raise ValueError(f"dataset {name!r} has no images")
    return DatasetResult(
        dataset=name,
        num_images=len(per_image),
        psnr=mean_score(r["psnr"] for r in per_image),
        ssim=mean_score(r["ssim"] for r in per_image),
        per_image=per_image,
        extra={k: mean_score(v) for k, v in extra_vals.items()},
    )


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def _cell(psnr: float | None, ssim: float | None) -> str:
    if psnr is None:
        return "-"
    return f"{psnr:.2f}/{ssim:.4f}"


def table_rows(
    label: str, scale: int, results: Sequence[DatasetResult], paper: Sequence[PaperRow] = ()
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paper-layout table: Method | Scale | <dataset PSNR/SSIM>..."""
    datasets = [r.dataset for r in results]
    header = ["Method", "Scale", *[DISPLAY_NAMES.get(d, d) for d in datasets]]
    rows = [[label, f"x{scale}", *[_cell(r.psnr, r.ssim) for r in results]]]
    for pr in paper:
        cells = [_cell(*pr.results[d]) if d in pr.results else "-" for d in datasets]
        rows.append([f"{pr.model} (paper: {pr.source})", f"x{pr.scale}", *cells])
    return header, rows


def render_markdown(header: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> str:
    """A GitHub markdown table (PSNR/SSIM cells), with an optional title line."""
    lines = [f"{title}\n"] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width table for the terminal."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in rows]
    return "\n".join(out) + "\n"


def render_csv(label: str, scale: int, results: Sequence[DatasetResult], paper: Sequence[PaperRow] = ()) -> str:
    """Long-format CSV: one line per (method, dataset) with PSNR and SSIM at full precision."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "source", "scale", "dataset", "num_images", "psnr", "ssim"])
    for r in results:
        w.writerow([label, "measured", scale, r.dataset, r.num_images, f"{r.psnr:.6f}", f"{r.ssim:.6f}"])
    for pr in paper:
        for d in (r.dataset for r in results):
            if d in pr.results:
                p, s = pr.results[d]
                w.writerow([pr.model, f"paper: {pr.source}", pr.scale, d, "", p, s])
    return buf.getvalue()


def _finite(obj):
    """Replace non-finite floats (PSNR of identical images is inf) by strings, for strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_reports(
    out_dir: Path,
    stem: str,
    *,
    label: str,
    scale: int,
    results: Sequence[DatasetResult],
    paper: Sequence[PaperRow] = (),
    meta: Mapping | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` into ``out_dir``; returns their paths.

    Each file is written to a temporary name and renamed, so an interrupted run never leaves half a
    table (or replaces a complete one with half of a new one).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = table_rows(label, scale, results, paper)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "json")}
    protocol = ", ".join(f"{k}={v}" for k, v in (meta or {}).get("protocol", {}).items())
    title = f"PSNR/SSIM of {label} x{scale}" + (f" ({protocol})" if protocol else "")
    payload = {
        **(meta or {}),
        "results": [asdict(r) for r in results],
        "paper": [asdict(p) for p in paper],
    }
    texts = {
        "md": render_markdown(header, rows, title),
        "csv": render_csv(label, scale, results, paper),
        "json": json.dumps(_finite(payload), indent=2, default=str),
    }
    for ext, text in texts.items():
        tmp = paths[ext].with_name(f".{paths[ext].name}.partial-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, paths[ext])
    return paths
