"""``sr-eval --real``: no-reference evaluation on folders of LR-only images (RealSRSet layout).

A real-world set is a flat folder of low-quality images without ground truth (RealSRSet+5images:
``RealSRSet/*.png``). For each image the model's output is scored with the no-reference metrics of
:mod:`sr_eval.no_reference` (``--nr-metrics``, default NIQE); per-image scores and their means go
to ``<out>/<name>/<model>_x<scale>_real.{md,csv,json}``, and with ``--save-images`` the outputs to
``<out>/<name>/images/<stem>_x<scale>.png``. Everything that can fail on the command line (the
folder, metric files, pyiqa, the weights) fails before the first image.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sr_eval.loading import EvalError, UsageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_real_images(root: str | Path) -> list[Path]:
    """The images directly in ``root`` (sorted by name); EvalError naming the folder if none."""
    folder = Path(root)
    if not folder.is_dir():
        raise UsageError(f"--data-root {root}: not a folder (--real takes a folder of LR images, e.g. RealSRSet)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise EvalError(f"--data-root {root}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
    return files


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def render_real_markdown(label: str, scale: int, rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """Markdown table: one row per image, then the mean."""
    head = "| image | size | " + " | ".join(metrics) + " |\n|---|---|" + "---|" * len(metrics) + "\n"
    lines = [f"| {r['image']} | {r['width']}x{r['height']} | " + " | ".join(f"{r[m]:.4f}" for m in metrics) + " |"
             for r in rows]
    mean = "| **mean** | | " + " | ".join(f"**{_mean([r[m] for r in rows]):.4f}**" for m in metrics) + " |"
    return f"# {label} x{scale}, no-reference\n\n" + head + "\n".join([*lines, mean]) + "\n"


def evaluate_real(args: Any) -> int:
    """The ``--real`` branch of ``sr-eval`` (module docstring); ``args`` is sr-eval's parsed namespace."""
    from tqdm import tqdm

    from sr_data import read_image, write_image
    from sr_eval.cli import check_precision, new_run_dir, note_tile_rounding
    from sr_eval.loading import load_model, pick_device
    from sr_eval.no_reference import NO_REFERENCE, no_reference_metrics, parse_weights
    from sr_eval.runner import Upscaler

    if not args.data_root:
        raise UsageError("--real needs --data-root (a folder of LR images, e.g. RealSRSet+5images/RealSRSet)")
    files = list_real_images(args.data_root)
    names = [m.strip().lower() for m in (args.nr_metrics or "").split(",") if m.strip()]
    if not names and not args.save_images:
        raise UsageError("--real with --nr-metrics '' computes nothing; name a metric or add --save-images")
    device = pick_device(args.device)
    check_precision("sr-eval", args.precision, device)
    metrics = no_reference_metrics(names, device, parse_weights(args.nr_weights))
    model = load_model(args.model, args.scale, args.weights, allow_random_weights=args.allow_random_weights,
                       device=device)
    note_tile_rounding("sr-eval", model, args.tile, args.tile_overlap)
    scale = int(model.scale)
    label = str(getattr(model, "model_name", args.model or "model"))
    run_dir = new_run_dir(Path(args.out), args.name or f"{label}_x{scale}_real", args.overwrite)
    upscaler = Upscaler(model, device, tile=args.tile, tile_overlap=args.tile_overlap, precision=args.precision,
                        self_ensemble=args.self_ensemble, max_memory=args.max_memory,
                        note=lambda m: tqdm.write(m, file=sys.stderr), progress=not args.no_progress, prog="sr-eval")
    rows: list[dict[str, Any]] = []
    for path in tqdm(files, desc=Path(args.data_root).name, unit="img", file=sys.stderr, disable=args.no_progress):
        try:
            img = read_image(path)
        except ValueError as err:
            raise EvalError(f"{path}: {err}") from None
        lr = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float().div(255).to(device)
        t0 = time.perf_counter()
        sr, _info = upscaler(lr, name=path.name)
        row: dict[str, Any] = {"image": path.name, "width": int(img.shape[1]), "height": int(img.shape[0]),
                               "seconds": time.perf_counter() - t0}
        for m, fn in metrics.items():
            row[m] = float(fn(sr)[0])
        rows.append(row)
        if args.save_images:
            out = (sr[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            write_image(run_dir / "images" / f"{path.stem}_x{scale}.png", out)
    run_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{label}_x{scale}_real"
    md = render_real_markdown(label, scale, rows, names)
    (run_dir / f"{stem}.md").write_text(md, encoding="utf-8")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "width", "height", "seconds", *names])
    writer.writeheader()
    writer.writerows(rows)
    (run_dir / f"{stem}.csv").write_text(buf.getvalue(), encoding="utf-8")
    summary = {"model": label, "scale": scale, "weights": args.weights, "data_root": str(args.data_root),
               "device": str(device), "metrics": {m: {"mean": _mean([r[m] for r in rows]),
                                                      "lower_better": NO_REFERENCE[m].lower_better} for m in names},
               "images": rows, "precision": args.precision, "tile": args.tile, "self_ensemble": args.self_ensemble}
    (run_dir / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    print(md, end="")
    print(f"sr-eval: wrote {stem}.md, {stem}.csv, {stem}.json" + (" and images/" if args.save_images else "")
          + f" to {run_dir}", file=sys.stderr)
    return 0
