"""Arbitrary-scale evaluation and upscaling (ESC+LTE, ESC paper section 4.3 and Table 5).

Protocol (LIIF/LTE's DIV2K rule, which the paper follows): RGB PSNR on float images, the output
clamped to [0, 1] and **not** rounded to 8 bits (LTE's ``calc_psnr``; our fixed-scale tables round as
BasicSR does), after removing ``scale + 6`` pixels on every side (:func:`sr_data.arbitrary_scale.paper_border`,
``ceil(scale) + 6`` for non-integer scales); the mean over images. Pairs come from
:func:`sr_data.build_arbitrary_eval_dataset` (the DIV2K X2-X4 LR folders when present; otherwise
``h = floor(H / s)``, HR cropped to ``round(h s)``, MATLAB bicubic LR). The model renders the
HR's exact size (``model(lr, size=hr_size)``); LTE's queries are chunked, the body sees the
whole LR image (no tiling).

``sr-upscale`` (:class:`ArbitraryUpscaler`) bounds memory as for the fixed-scale models: the body's
cost is probed once, and an image whose whole-image estimate exceeds the budget is rendered in LR
tiles (:func:`render_tiled`): each tile renders exactly the output pixels whose centres fall in its
core (the overlap split in the middle), with coordinates and cell expressed in the tile's frame, so
no output pixel is rendered twice and nothing is blended. Where the body's receptive field fits in
half the overlap the result equals the whole-image render (tested with a local body); otherwise it
is the usual tiling approximation.

:data:`PAPER_TABLE5` holds Table 5 as printed (DIV2K-validation, RGB PSNR, dB).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "PAPER_TABLE5",
    "PAPER_TABLE5_SCALES",
    "ArbitraryUpscaler",
    "evaluate_arbitrary",
    "is_arbitrary_model",
    "psnr_rgb_border",
    "render_table5",
    "render_tiled",
    "tile_parts",
    "wants_arbitrary",
]

PAPER_TABLE5_SCALES: tuple[int, ...] = (2, 3, 4, 6, 12, 18, 24, 30)
SEEN_SCALES: tuple[int, ...] = (2, 3, 4)  # the training range x1-x4
#: ESC paper, Table 5: DIV2K-validation, RGB PSNR (dB) with the border scale + 6 removed.
PAPER_TABLE5: dict[str, tuple[float, ...]] = {
    "RDN+LTE": (35.04, 31.32, 29.33, 27.04, 23.95, 22.40, 21.36, 20.64),
    "ATD-lt+LTE": (34.98, 31.25, 29.27, 27.01, 23.94, 22.38, 21.37, 20.64),
    "HiT-SRF+LTE": (35.10, 31.35, 29.35, 27.05, 23.94, 22.39, 21.36, 20.64),
    "ESC+LTE": (35.13, 31.38, 29.37, 27.08, 23.97, 22.40, 21.38, 20.64),
}


def is_arbitrary_model(model: nn.Module) -> bool:
    """Whether ``model`` renders any scale (``model(x, scale=...)`` / ``size=``)."""
    return bool(getattr(model, "arbitrary_scale", False))


def wants_arbitrary(name: str | None, weights: str | Path | None) -> bool:
    """Whether ``--model name --weights weights`` is an arbitrary-scale model, decided before loading:
    a registered LTE name, or our safetensors metadata naming one (or ``upsampler: lte``)."""
    from sr_models.arbitrary_scale import is_arbitrary_scale

    if name is not None and is_arbitrary_scale(name, {}):
        return True
    if weights is None or not Path(weights).is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception:  # not a safetensors file: decided by the name only
        return False
    try:
        config = json.loads(meta.get("config", "{}"))
    except ValueError:
        config = {}
    return is_arbitrary_scale(str(meta.get("model_name", name or "")), config if isinstance(config, dict) else {})


def psnr_rgb_border(sr: torch.Tensor | np.ndarray, hr: torch.Tensor | np.ndarray, border: int) -> float:
    """RGB PSNR (dB) of two (3, H, W) (or (H, W, 3)) float images in [0, 1] after removing ``border`` pixels per side.

    ``sr`` is clamped to [0, 1]; no rounding; float64; ``10 log10(1 / MSE)``, ``inf`` when equal.
    Shapes must match; a border that leaves nothing is a ValueError.
    """
    a = torch.as_tensor(sr).double().clamp(0, 1)
    b = torch.as_tensor(hr).double()
    if a.shape != b.shape:
        raise ValueError(f"sr and hr shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 3 and a.shape[-1] == 3 and a.shape[0] != 3:
        a, b = a.permute(2, 0, 1), b.permute(2, 0, 1)
    h, w = a.shape[-2:]
    if border < 0 or 2 * border >= min(h, w):
        raise ValueError(f"border {border} leaves nothing of a {h}x{w} image")
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def tile_parts(length: int, out_length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """One axis of :func:`render_tiled`: ``(start, extent, out_lo, out_hi)`` per tile.

    LR tiles ``[start, start + extent)`` are :func:`sr_eval.inference.tile_starts`'s; consecutive
    cores meet in the middle of their overlap, and a tile renders the output pixels ``[out_lo,
    out_hi)`` whose centres ``(i + 1/2) * length / out_length`` (LR pixel units) fall in its core.
    The output ranges partition ``[0, out_length)`` (some may be empty).
    """
    from sr_eval.inference import tile_starts

    starts = tile_starts(length, tile, overlap)
    ends = [min(s + tile, length) for s in starts]
    cuts = [Fraction(0)] + [Fraction(starts[k] + ends[k - 1], 2) for k in range(1, len(starts))] + [Fraction(length)]

    def first_pixel(c: Fraction) -> int:  # smallest i with (i + 1/2) * length / out_length >= c
        return min(out_length, max(0, math.ceil(c * out_length / length - Fraction(1, 2))))

    return [(starts[k], ends[k] - starts[k], first_pixel(cuts[k]), first_pixel(cuts[k + 1])) for k in range(len(starts))]


def _frame_coords(out_lo: int, out_hi: int, out_length: int, length: int, start: int, extent: int) -> torch.Tensor:
    """Coordinates in [-1, 1] of a tile's frame ``[start, start + extent)`` of output pixels ``[out_lo, out_hi)``."""
    i = torch.arange(out_lo, out_hi, dtype=torch.float64)
    lr_pos = (2 * i + 1) * length / (2 * out_length)  # LR pixel units from the image's edge
    return 2 * (lr_pos - start) / extent - 1


def render_tiled(model: nn.Module, lr: torch.Tensor, size: tuple[int, int], tile: int, overlap: int,
                 tick: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Render ``lr`` (B, 3, h, w) at ``size`` (H, W) tile by tile with ``model.render_grid``
    (an :class:`sr_models.arbitrary_scale.LTESR`) -> (B, 3, H, W) float32, not clamped.

    Tiles of ``tile`` LR pixels overlapping by ``overlap`` (:func:`tile_parts`); each output pixel is
    rendered once, by the tile whose core holds its centre, with its coordinate and cell in that tile's
    frame. ``tick(done, total)`` after each tile.
    """
    b, _, h, w = lr.shape
    out_h, out_w = size
    rows, cols = tile_parts(h, out_h, tile, overlap), tile_parts(w, out_w, tile, overlap)
    out = torch.empty(b, 3, out_h, out_w, device=lr.device, dtype=torch.float32)
    total, done = len(rows) * len(cols), 0
    for y0, th, i0, i1 in rows:
        for x0, tw, j0, j1 in cols:
            if i1 > i0 and j1 > j0:
                ry = _frame_coords(i0, i1, out_h, h, y0, th).to(lr.device)
                rx = _frame_coords(j0, j1, out_w, w, x0, tw).to(lr.device)
                cell = (2.0 * h / (out_h * th), 2.0 * w / (out_w * tw))
                part = model.render_grid(lr[:, :, y0:y0 + th, x0:x0 + tw].float(), ry, rx, cell)
                out[:, :, i0:i1, j0:j1] = part.float()
            done += 1
            if tick is not None:
                tick(done, total)
    return out


@dataclass
class ArbitraryUpscaler:
    """sr-upscale's engine for arbitrary-scale models: ``(sr, None) = upscaler(lr, name)``, with
    ``lr`` (B, 3, h, w) in [0, 1] rendered at ``scale`` or at ``size`` (H, W), clamped, float32.

    Memory is planned as :class:`sr_eval.runner.Upscaler` plans it: ``tile=None`` renders the whole
    image when its estimate fits the budget (``max_memory``, else a share of the free memory), else
    in the largest LR tiles that fit (:func:`render_tiled`), announced through ``note``; an int
    ``tile`` forces tiles of that side and is refused when its estimate does not fit.
    """

    model: nn.Module
    scale: float | None = None
    size: tuple[int, int] | None = None
    tile: int | None = None
    tile_overlap: int = 32
    max_memory: int | None = None
    note: Callable[[str], None] | None = None
    prog: str = "sr-upscale"

    def __post_init__(self) -> None:
        # a tile advances by tile - overlap LR pixels (no window grid here): at or below twice the
        # overlap most of every tile is recomputed context, and --tile 33 --tile-overlap 32 would mean
        # one tile per pixel
        if self.tile is not None and self.tile <= 2 * self.tile_overlap:
            raise ValueError(f"--tile {self.tile} must exceed twice --tile-overlap {self.tile_overlap} "
                             "for arbitrary-scale models")

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        """The output size for an (h, w) input."""
        from sr_layers.lte import output_size

        if self.size is None and self.scale is None:
            return output_size((h, w), float(self.model.scale))
        return output_size((h, w), self.scale, self.size)

    def plan(self, lr: torch.Tensor, size: tuple[int, int]):
        """The :class:`sr_eval.memory.Plan` for ``lr`` rendered at ``size`` (free memory read now)."""
        from sr_eval.memory import MemoryPlanError, Plan, budget_for, format_bytes, measure_cost, plan_image

        b, _, h, w = lr.shape
        budget = budget_for(lr.device, self.max_memory)
        if budget is None and self.tile is None:
            return Plan(tile=None, tiles=1, estimate=0, whole_estimate=0, budget=None, fits=True)
        cost = measure_cost(self.model, lr.device, forward=lambda t: self.model(t))
        try:
            plan = plan_image(self.model, cost, h, w, budget=budget, tile=self.tile, auto=self.tile is None,
                              tile_overlap=self.tile_overlap, batch=b, out_scale=size[0] / h)
        except MemoryPlanError as exc:
            raise MemoryPlanError(f"{w}x{h} {exc}; use --max-memory to allow more, or a smaller image") from None
        if plan.tile is not None and self.tile is None and plan.tile <= 2 * self.tile_overlap:
            raise MemoryPlanError(f"{w}x{h} would need tiles of {plan.tile} px, not more than twice --tile-overlap "
                                  f"{self.tile_overlap}; use --max-memory to allow more, or a smaller --tile-overlap")
        if not plan.fits:
            raise MemoryPlanError(
                f"{w}x{h} with --tile {self.tile} needs about {format_bytes(plan.estimate)}, but the budget is "
                f"{format_bytes(plan.budget or 0)}; use a smaller --tile, or leave --tile out to choose one automatically"
            )
        return plan

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor, name: str = "image") -> tuple[torch.Tensor, None]:
        from sr_eval.memory import format_bytes

        h, w = lr.shape[-2], lr.shape[-1]
        size = self.target_size(h, w)
        plan = self.plan(lr, size)
        if plan.tile is None:
            return self.model(lr.float(), size=size).float().clamp_(0, 1), None
        if self.tile is None and self.note is not None:
            self.note(
                f"{self.prog}: {name} ({w}x{h}): the whole image needs about {format_bytes(plan.whole_estimate)}, "
                f"the budget is {format_bytes(plan.budget or 0)}: rendering in {plan.tiles} tiles of {plan.tile} px "
                f"(overlap {self.tile_overlap}; about {format_bytes(plan.estimate)})"
            )
        return render_tiled(self.model, lr, size, plan.tile, self.tile_overlap).clamp_(0, 1), None


def evaluate_arbitrary(
    model: nn.Module,
    datasets: Sequence[str],
    scales: Sequence[float],
    *,
    root: str | Path | None,
    device: torch.device,
    max_images: int | None = None,
    progress: Callable[[str, float, int, int], None] | None = None,
) -> dict[str, dict[float, dict[str, object]]]:
    """Mean RGB PSNR per dataset and scale (the module's protocol).

    Returns ``{dataset: {scale: {"psnr": dB, "images": n, "border": px, "per_image": [{name, psnr}]}}}``.
    All datasets and scales are opened before the first forward (a missing folder fails early).
    """
    from sr_data.arbitrary_scale import build_arbitrary_eval_dataset, paper_border

    opened = {(d, s): build_arbitrary_eval_dataset(d, root=root, scale=s) for d in datasets for s in scales}
    out: dict[str, dict[float, dict[str, object]]] = {}
    model.eval()
    for (name, s), ds in opened.items():
        n = len(ds) if max_images is None else min(len(ds), max_images)  # type: ignore[arg-type]
        border = paper_border(s)
        per_image = []
        for i in range(n):
            item = ds[i]
            lr = item["lr"].unsqueeze(0).to(device)
            hr = item["hr"]
            with torch.no_grad():
                sr = model(lr, size=tuple(hr.shape[-2:]))[0].float().cpu()
            per_image.append({"name": item["name"], "psnr": psnr_rgb_border(sr, hr, border)})
            if progress is not None:
                progress(name, s, i + 1, n)
        mean = float(np.mean([r["psnr"] for r in per_image])) if per_image else math.nan
        out.setdefault(name, {})[s] = {"psnr": mean, "images": n, "border": border, "per_image": per_image}
    return out


def _scale_label(s: float) -> str:
    return f"x{int(s)}" if float(s).is_integer() else f"x{s:g}"


def render_table5(label: str, results: dict[float, float], *, dataset: str = "div2k-val",
                  compare_paper: bool = False) -> str:
    """Table 5's layout as text: one row per method, columns the scales (Seen x2-x4 | Unseen),
    our row last; the paper's rows (DIV2K-validation only) with ``compare_paper``."""
    scales = sorted(set(results) | (set(PAPER_TABLE5_SCALES) if compare_paper else set()))
    seen = [s for s in scales if s <= max(SEEN_SCALES)]
    unseen = [s for s in scales if s > max(SEEN_SCALES)]
    cols = [*seen, *unseen]
    rows: list[tuple[str, list[str]]] = []
    if compare_paper:
        for method, values in PAPER_TABLE5.items():
            by_scale = dict(zip(PAPER_TABLE5_SCALES, values, strict=True))
            rows.append((f"{method} [paper]", [f"{by_scale[s]:.2f}" if s in by_scale else "-" for s in cols]))
    ours = [f"{results[s]:.2f}" if s in results and math.isfinite(results[s]) else "-" for s in cols]
    rows.append((f"{label} (ours)", ours))
    width = max(len("Methods"), *(len(r[0]) for r in rows)) + 2
    cell = 7
    sep = " | "
    groups = "Methods".ljust(width) + sep + "Seen".ljust(cell * len(seen)) + (sep + "Unseen" if unseen else "")
    head = " " * width + sep + "".join(_scale_label(s).ljust(cell) for s in seen)
    if unseen:
        head += sep + "".join(_scale_label(s).ljust(cell) for s in unseen)
    lines = [f"{dataset}: RGB PSNR (dB), border scale + 6" + (" (paper rows: ESC Table 5)" if compare_paper else ""),
             groups.rstrip(), head.rstrip()]
    for name, vals in rows:
        line = name.ljust(width) + sep + "".join(v.ljust(cell) for v in vals[: len(seen)])
        if unseen:
            line += sep + "".join(v.ljust(cell) for v in vals[len(seen):])
        lines.append(line.rstrip())
    if compare_paper and dataset != "div2k-val":
        lines.append("note: the paper's rows are DIV2K-validation figures")
    return "\n".join(lines) + "\n"
