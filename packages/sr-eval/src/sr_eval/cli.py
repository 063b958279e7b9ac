"""The ``sr-eval`` command: benchmark tables (default) and ``sr-eval profile``.

    sr-eval --model esc --scale 4 --weights ESC_x4.pth \\
        --datasets set5,set14,b100,urban100,manga109 --data-root datasets/ --compare-paper
    sr-eval profile --model esc --scale 4 --output-size 1280x720

Bad input (unknown model, missing weights or dataset folder, unreadable image, mismatched weights)
prints one line ``sr-eval: error: ...`` to stderr and exits with status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from sr_eval.inference import DEFAULT_TILE_OVERLAP, PRECISIONS
from sr_eval.loading import EvalError, one_line

DEFAULT_DATASETS = "set5,set14,b100,urban100,manga109"


def run_command(prog: str, body: Callable[[], int], debug: bool) -> int:
    """Run ``body``; turn any exception into one stderr line and exit status 1 (traceback with --debug)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda msg, cat, *a, **k: print(f"{prog}: warning: {msg}", file=sys.stderr)
        try:
            return body()
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:
            if debug:
                traceback.print_exc()
            msg = one_line(err)
            if not isinstance(err, (EvalError, ValueError, TypeError, OSError)):
                msg = f"{type(err).__name__}: {msg}"
            print(f"{prog}: error: {msg}", file=sys.stderr)
            return 1


def add_inference_args(p: argparse.ArgumentParser) -> None:
    """Options shared by sr-eval and sr-upscale."""
    p.add_argument("--model", help="registry name (see --list-models); optional when the weights file names it")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the checkpoint's, else 4)")
    p.add_argument("--weights", help="checkpoint: BasicSR .pth (params_ema/params) or project .safetensors")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="run without --weights on a randomly initialised model (testing only)")
    p.add_argument("--tile", type=int, default=None,
                   help="LR tile side in pixels for tiled inference (default: whole image at once)")
    p.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP,
                   help=f"LR pixels of overlap between tiles (default {DEFAULT_TILE_OVERLAP})")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="compute precision; bf16/fp16 fall back to fp32 for any tile that gives NaN/inf")
    p.add_argument("--self-ensemble", action="store_true", help="x8 flip/transpose ensemble (8x slower)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--debug", action="store_true", help="print full tracebacks on errors")


def _eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sr-eval",
        description="PSNR/SSIM of a model on SR benchmarks, in the papers' convention (Y channel, "
        "crop border = scale, uint8-rounded images, mean of per-image values). Writes markdown, CSV "
        "and JSON. Run 'sr-eval profile --help' for parameters/FLOPs/latency.",
    )
    add_inference_args(p)
    p.add_argument("--datasets", default=DEFAULT_DATASETS,
                   help=f"comma-separated: set5,set14,b100,urban100,manga109,div2k-val,lsdir-val,sample "
                   f"(default {DEFAULT_DATASETS})")
    p.add_argument("--data-root", help="folder holding the benchmark sets (see sr-data's README for layouts)")
    p.add_argument("--crop-border", type=int, default=None, help="pixels cropped per side (default: the scale)")
    p.add_argument("--rgb", action="store_true", help="measure on RGB instead of the Y channel (not the paper convention)")
    p.add_argument("--batch-size", type=int, default=1, help="max images of equal size per forward (default 1)")
    p.add_argument("--perceptual", default="",
                   help="comma-separated pyiqa metrics, e.g. lpips,dists (needs the 'perceptual' extra)")
    p.add_argument("--compare-paper", action="store_true", help="add the published figures where known")
    p.add_argument("--out", default="sr-eval-results", help="output folder for .md/.csv/.json (default ./sr-eval-results)")
    p.add_argument("--list-models", action="store_true", help="print the registered model names and exit")
    return p


def _profile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sr-eval profile",
        description="Parameters, FLOPs, latency (CUDA events, median) and peak memory of a model, as JSON. "
        "MACs are reported twice: 'macs' is the full count (what runs, FlopCounterMode), 'macs_pft_flops' is "
        "PFT's flops() convention, the one of the IET/PFT papers' tables (conv_after_body as 3 C^2, only the "
        "pixel-shuffle convs, all at LR size; null for families without that formula).",
    )
    p.add_argument("--model", required=True, help="registry name")
    p.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4)")
    p.add_argument("--weights", help="optional checkpoint (random weights are fine for cost profiling)")
    p.add_argument("--output-size", default="1280x720", help="WIDTHxHEIGHT of the SR output (default 1280x720)")
    p.add_argument("--device", default="auto", help="cpu or cuda[:N] (default: cuda if available)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--warmup", type=int, default=5, help="warm-up forwards before timing (default 5)")
    p.add_argument("--repeats", type=int, default=20, help="timed forwards; the median is reported (default 20)")
    p.add_argument("--latency", choices=("auto", "yes", "no"), default="auto",
                   help="measure latency (auto: on CUDA only; CPU timings are slow and rarely meaningful)")
    p.add_argument("--json", dest="json_out", help="also write the JSON to this file")
    p.add_argument("--debug", action="store_true", help="print full tracebacks on errors")
    return p


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise EvalError(f"--output-size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from err
    if w < 1 or h < 1:
        raise EvalError(f"--output-size {text!r}: sides must be positive")
    return w, h


def _profile(args: argparse.Namespace) -> int:
    from sr_eval.loading import load_model, pick_device
    from sr_eval.profiling import profile_model

    size = parse_size(args.output_size)
    device = pick_device(args.device)
    model = load_model(args.model, args.scale, args.weights, allow_random_weights=True, device=device)
    latency = {"auto": None, "yes": True, "no": False}[args.latency]
    res = profile_model(model, output_size=size, device=device, precision=args.precision,
                        warmup=args.warmup, repeats=args.repeats, measure_latency=latency)
    res["weights"] = args.weights
    text = json.dumps(res, indent=2)
    print(text)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text + "\n")
    return 0


def _check_common(args: argparse.Namespace) -> None:
    if args.tile is not None and args.tile < 1:
        raise EvalError(f"--tile must be positive, got {args.tile}")
    if args.tile is not None and not 0 <= args.tile_overlap < args.tile:
        raise EvalError(f"--tile-overlap must be in [0, tile), got {args.tile_overlap} with --tile {args.tile}")
    if args.scale is not None and args.scale < 1:
        raise EvalError(f"--scale must be positive, got {args.scale}")


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sr_eval.benchmark import evaluate_dataset, render_text, table_rows, write_reports
    from sr_eval.loading import load_model, pick_device
    from sr_eval.paper_results import paper_rows
    from sr_eval.perceptual import perceptual_metrics

    if args.list_models:
        from sr_models import list_models

        print("\n".join(list_models()))
        return 0
    _check_common(args)
    names = [d.strip().lower() for d in args.datasets.split(",") if d.strip()]
    if not names:
        raise EvalError("--datasets is empty")
    if args.batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = pick_device(args.device)
    model = load_model(args.model, args.scale, args.weights,
                       allow_random_weights=args.allow_random_weights, device=device)
    scale = int(model.scale)
    label = str(getattr(model, "model_name", args.model or "model"))
    crop = scale if args.crop_border is None else args.crop_border
    perceptual = perceptual_metrics([m.strip() for m in args.perceptual.split(",") if m.strip()], device)

    from sr_data import build_eval_dataset

    datasets = []
    for name in names:  # open all first, so a missing folder fails before any long run
        try:
            datasets.append((name, build_eval_dataset(name, root=args.data_root, scale=scale)))
        except (ValueError, OSError) as err:
            raise EvalError(f"dataset {name!r}: {one_line(err)}") from err
    results = []
    for name, ds in datasets:
        with tqdm(total=len(ds), desc=name, unit="img", file=sys.stderr, leave=False) as bar:
            results.append(evaluate_dataset(
                model, ds, name=name, crop_border=crop, y_channel=not args.rgb, device=device,
                max_batch=args.batch_size, perceptual=perceptual, progress=bar.update,
                tile=args.tile, tile_overlap=args.tile_overlap, precision=args.precision,
                self_ensemble=args.self_ensemble,
            ))
    paper = paper_rows(label, scale) if args.compare_paper else []
    if args.compare_paper and not paper:
        print(f"sr-eval: note: no published figures known for {label} x{scale}", file=sys.stderr)
    header, rows = table_rows(f"{label} (ours)", scale, results, paper)
    print(render_text(header, rows), end="")
    for r in results:
        if r.extra:
            print(f"{r.dataset}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.extra.items()))
    protocol = {
        "y_channel": not args.rgb, "crop_border": crop, "tile": args.tile,
        "tile_overlap": args.tile_overlap if args.tile else None, "precision": args.precision,
        "self_ensemble": args.self_ensemble, "pad_multiple": getattr(model, "pad_multiple", 1),
        "pad_mode": getattr(model, "pad_mode", "reflect"),
    }
    meta = {"model": label, "scale": scale, "weights": args.weights, "datasets": names,
            "data_root": args.data_root, "device": str(device), "protocol": protocol,
            "config": getattr(model, "config", None)}
    paths = write_reports(Path(args.out), f"{label}_x{scale}", label=f"{label} (ours)", scale=scale,
                          results=results, paper=paper, meta=meta)
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sr-eval``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "profile":
        args = _profile_parser().parse_args(argv[1:])
        return run_command("sr-eval profile", lambda: _profile(args), args.debug)
    args = _eval_parser().parse_args(argv)
    return run_command("sr-eval", lambda: _evaluate(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
