"""``sr-eval`` for arbitrary-scale models (esc-lte, ``upsampler="lte"``): float scales, the ESC
paper's Table 5 protocol (:mod:`sr_eval.arbitrary_scale`) and layout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from sr_eval.arbitrary_scale import PAPER_TABLE5_SCALES, evaluate_arbitrary, render_table5
from sr_eval.loading import EvalError, UsageError, one_line


def _scales(args: argparse.Namespace) -> tuple[float, ...]:
    if args.scale is None:
        return tuple(float(s) for s in PAPER_TABLE5_SCALES)
    values = args.scale if isinstance(args.scale, tuple) else (args.scale,)
    return tuple(float(s) for s in values)


def evaluate_arbitrary_command(args: argparse.Namespace, model: nn.Module, names: list[str],
                               device: torch.device) -> int:
    """Evaluate ``model`` on ``names`` at ``--scale`` (default Table 5's x2...x30), print one Table 5
    layout per dataset, write ``table.txt`` and ``results.json`` into a new run folder."""
    from tqdm import tqdm

    from sr_eval.cli import new_run_dir

    unsupported = [flag for flag, on in (("--tile", args.tile is not None), ("--self-ensemble", args.self_ensemble),
                                         ("--perceptual", bool(args.perceptual)), ("--crop-border", args.crop_border is not None),
                                         ("--batch-size", args.batch_size != 1), ("--precision", args.precision != "fp32"))
                   if on]
    if unsupported:
        raise UsageError(f"{', '.join(unsupported)}: not available for arbitrary-scale models (their protocol is fixed: "
                         "whole images, fp32, RGB PSNR with the border scale + 6)")
    scales = _scales(args)
    label = str(getattr(model, "model_name", args.model or "model"))
    run_dir = new_run_dir(Path(args.out), args.name or f"{label}_arbitrary", args.overwrite)
    bar = tqdm(total=0, unit="img", file=sys.stderr, leave=False, disable=args.no_progress)

    def progress(name: str, s: float, done: int, total: int) -> None:
        bar.set_description(f"{name} x{s:g}")
        if done == 1:
            bar.total = (bar.total or 0) + total
        bar.update(1)

    try:
        results = evaluate_arbitrary(model, names, scales, root=args.data_root, device=device, progress=progress)
    except (ValueError, OSError) as err:
        raise EvalError(one_line(err)) from err
    finally:
        bar.close()
    text = ""
    for name in names:
        means = {s: float(r["psnr"]) for s, r in results[name].items()}  # type: ignore[arg-type]
        text += render_table5(label, means, dataset=name, compare_paper=args.compare_paper) + "\n"
    print(text, end="")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "table.txt").write_text(text, encoding="utf-8")
    payload = {
        "model": label, "weights": args.weights, "datasets": names, "scales": list(scales), "data_root": args.data_root,
        "device": str(device), "config": getattr(model, "config", None),
        "protocol": {"metric": "PSNR", "channels": "RGB", "border": "scale + 6 (ceil for non-integer scales)",
                     "rounding": "none (float, clamped to [0, 1])", "tile": None},
        "results": {n: {f"{s:g}": r for s, r in per.items()} for n, per in results.items()},
    }
    (run_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"sr-eval: wrote table.txt, results.json to {run_dir}", file=sys.stderr)
    return 0
