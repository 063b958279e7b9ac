"""The ``sr-eval`` command: benchmark tables (default) and ``sr-eval profile``.

    sr-eval --model esc --scale 4 --weights ESC_x4.pth \\
        --datasets set5,set14,b100,urban100,manga109 --data-root datasets/ --compare-paper
    sr-eval profile --model esc --scale 4 --output-size 1280x720

Every error prints one line ``sr-eval: error: ...`` to stderr, without a traceback (``--debug``
shows it): exit status 2 for a bad or missing argument (the message names the flag: unknown
``--model``, missing ``--weights``, ``--tile 0``...), 1 for bad data (mismatched weights, a missing
dataset folder, an unreadable image, out of memory, an OS error), 130 on Ctrl-C. Results go to a
new folder per run (``<out>/<model>_x<scale>``, then ``..._2``, ...) unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from sr_eval.inference import DEFAULT_TILE_OVERLAP, PRECISIONS, is_oom
from sr_eval.loading import EvalError, UsageError, one_line

DEFAULT_DATASETS = "set5,set14,b100,urban100,manga109"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: ... (see prog --help)``), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _silence_stdout() -> None:
    """After a closed pipe (``| head``), point stdout at /dev/null so the final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run_command(prog: str, body: Callable[[], int], debug: bool) -> int:
    """Run ``body``; turn any exception into one stderr line (traceback with --debug).

    Exit status: 2 for :class:`UsageError`, 1 for any other error (out of memory included), 130 on
    Ctrl-C, 0 after a closed output pipe (``sr-eval --list-models | head``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda msg, cat, *a, **k: print(f"{prog}: warning: {msg}", file=sys.stderr)
        try:
            return body()
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            _silence_stdout()
            return 0
        except Exception as err:
            if debug:
                traceback.print_exc()
            if isinstance(err, UsageError):
                print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
                return 2
            if is_oom(err):
                print(f"{prog}: error: out of memory ({one_line(err, 160)}); lower --max-memory or use --tile",
                      file=sys.stderr)
                return 1
            msg = one_line(err)
            if isinstance(err, OSError) and err.strerror and err.filename:
                msg = f"{err.filename}: {err.strerror}"
            elif not isinstance(err, (EvalError, ValueError, TypeError, OSError)):
                msg = f"{type(err).__name__}: {msg}"
            print(f"{prog}: error: {msg}", file=sys.stderr)
            return 1


def _tile_arg(text: str) -> int | None:
    """``--tile``: 'auto' -> None, else a positive integer."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number of pixels, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive (or 'auto'), got {value}")
    return value


def _size_arg(text: str) -> int:
    from sr_eval.memory import parse_size

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _scale_arg(text: str) -> int | float | tuple[int | float, ...]:
    """``--scale``: an integer; a float >= 1 or a comma-separated list (arbitrary-scale models only,
    checked once the model is known)."""
    values: list[int | float] = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number (or a comma-separated list), got {text!r}") from None
        if not math.isfinite(v) or v < 1:
            raise argparse.ArgumentTypeError(f"must be a number >= 1, got {part.strip()!r}")
        values.append(int(v) if v.is_integer() else v)
    return values[0] if len(values) == 1 else tuple(values)


def fixed_scale(args: argparse.Namespace, model_name: str | None) -> int | None:
    """``args.scale`` for a fixed-scale model: a UsageError for a float or a list (arbitrary-scale only)."""
    if args.scale is None or isinstance(args.scale, int):
        return args.scale
    raise UsageError(f"--scale {args.scale!r}: model {model_name or '(from the weights)'} has a fixed integer scale; "
                     "float scales and lists need an arbitrary-scale model (esc-lte, or a model built with upsampler=lte)")


def add_inference_args(p: argparse.ArgumentParser) -> None:
    """Options shared by sr-eval and sr-upscale."""
    p.add_argument("--model", help="registry name (see --list-models); optional when the weights file names it")
    p.add_argument("--scale", type=_scale_arg, default=None,
                   help="upscaling factor (default: the checkpoint's, else 4); arbitrary-scale models (esc-lte) take "
                   "any float >= 1, and sr-eval a comma-separated list (default there: 2,3,4,6,12,18,24,30)")
    p.add_argument("--weights", help="checkpoint: BasicSR .pth (params_ema/params) or project .safetensors")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="run without --weights on a randomly initialised model (testing only)")
    p.add_argument("--tile", type=_tile_arg, default=None, metavar="auto|N",
                   help="LR tile side for tiled inference; rounded up to a multiple of the model's pad multiple "
                   "and to at least --tile-overlap plus one multiple (default auto: the whole image when it fits "
                   "the memory budget, else the largest tile that fits)")
    p.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP,
                   help=f"LR pixels of overlap between tiles (default {DEFAULT_TILE_OVERLAP})")
    p.add_argument("--max-memory", type=_size_arg, default=None, metavar="SIZE",
                   help="memory the inference may use, e.g. 4G (default: 60%% of the free memory, read per image)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="compute precision; bf16/fp16 fall back to fp32 for any tile that gives NaN/inf "
                   "(on the CPU bf16 is usually much slower than fp32)")
    p.add_argument("--self-ensemble", action="store_true", help="x8 flip/transpose ensemble (8x slower)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--debug", action="store_true", help="print full tracebacks on errors")


def _eval_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="sr-eval",
        description="PSNR/SSIM of a model on SR benchmarks, in the papers' convention (Y channel, "
        "crop border = scale, uint8-rounded images, mean of per-image values). Writes markdown, CSV "
        "and JSON. Run 'sr-eval profile --help' for parameters/FLOPs/latency.",
    )
    add_inference_args(p)
    p.add_argument("--datasets", default=None,
                   help=f"comma-separated: set5,set14,b100,urban100,manga109,div2k-val,lsdir-val,sample "
                   f"(default {DEFAULT_DATASETS}; div2k-val for arbitrary-scale models, as the ESC paper's Table 5)")
    p.add_argument("--data-root", help="folder holding the benchmark sets (see sr-data's README for layouts)")
    p.add_argument("--crop-border", type=int, default=None, help="pixels cropped per side (default: the scale)")
    p.add_argument("--rgb", action="store_true", help="measure on RGB instead of the Y channel (not the paper convention)")
    p.add_argument("--batch-size", type=int, default=1, help="max images of equal size per forward (default 1)")
    p.add_argument("--perceptual", default="",
                   help="comma-separated pyiqa metrics, e.g. lpips,dists (needs the 'perceptual' extra)")
    p.add_argument("--compare-paper", action="store_true", help="add the published figures where known")
    p.add_argument("--out", default="sr-eval-results",
                   help="folder of the run folders (default ./sr-eval-results); each run writes into a new "
                   "<out>/<name>/ (…_2, …_3 when it exists)")
    p.add_argument("--name", default=None, help="run folder name (default <model>_x<scale>)")
    p.add_argument("--overwrite", action="store_true", help="write into <out>/<name>/ even if it exists, replacing its tables")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list-models", action="store_true", help="print the registered model names and exit")
    p.add_argument("--real", action="store_true",
                   help="real-world mode: --data-root is a folder of LR-only images (RealSRSet layout), scored with "
                   "no-reference metrics (sr_eval.real)")
    p.add_argument("--nr-metrics", default="niqe", help="with --real: comma-separated niqe,musiq,maniqa (pyiqa; default niqe)")
    p.add_argument("--nr-weights", default=None, metavar="NAME=PATH,...",
                   help="with --real: the metrics' parameter files (default: pyiqa's cache under the torch hub folder)")
    p.add_argument("--save-images", action="store_true", help="with --real: also write the SR images to <run>/images/")
    return p


def _profile_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="sr-eval profile",
        description="Parameters, FLOPs, latency (CUDA events, median) and peak memory of a model, as JSON. "
        "MACs are reported twice: 'macs' is the full count (what runs, FlopCounterMode), 'macs_pft_flops' is "
        "PFT's flops() convention, the one of the IET/PFT papers' tables (conv_after_body as 3 C^2, only the "
        "pixel-shuffle convs, all at LR size; null for families without that formula).",
    )
    p.add_argument("--model", help="registry name (required)")
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
        raise UsageError(f"--output-size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from err
    if w < 1 or h < 1:
        raise UsageError(f"--output-size {text!r}: sides must be positive")
    return w, h


def _profile(args: argparse.Namespace) -> int:
    from sr_eval.loading import load_model, pick_device
    from sr_eval.profiling import profile_model

    if not args.model:
        raise UsageError("--model is required (see sr-eval --list-models)")
    if args.warmup < 0 or args.repeats < 1:
        raise UsageError(f"--warmup must be >= 0 and --repeats >= 1, got {args.warmup} and {args.repeats}")
    size = parse_size(args.output_size)
    device = pick_device(args.device)
    check_precision("sr-eval profile", args.precision, device)
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
    if args.tile_overlap < 0:
        raise UsageError(f"--tile-overlap must be >= 0, got {args.tile_overlap}")
    scales = args.scale if isinstance(args.scale, tuple) else (args.scale,)
    if any(s is not None and s < 1 for s in scales):
        raise UsageError(f"--scale must be >= 1, got {args.scale}")


def check_precision(prog: str, precision: str, device) -> None:
    """One warning line for a low precision on the CPU (measured about 18x slower than fp32 there)."""
    if precision != "fp32" and device.type == "cpu":
        print(f"{prog}: warning: --precision {precision} on the CPU is usually much slower than fp32 "
              "(most CPUs have no fast bf16/fp16 matrix units); it saves memory, not time", file=sys.stderr)


def note_tile_rounding(prog: str, model, tile: int | None, overlap: int) -> None:
    """Say what an explicit ``--tile`` becomes (the README's rounding), when it changes."""
    from sr_eval.inference import effective_tile, pad_policy

    if tile is None:
        return
    m = pad_policy(model).multiple
    used = effective_tile(tile, overlap, m)
    if used != tile:
        print(f"{prog}: note: --tile {tile} rounded up to {used} (a multiple of the model's pad multiple {m}, "
              f"at least --tile-overlap {overlap} + {m})", file=sys.stderr)


def new_run_dir(base: Path, name: str, overwrite: bool) -> Path:
    """``base/name``, or with --overwrite reused; otherwise the first free ``name_2``, ``name_3``, ..."""
    if base.exists() and not base.is_dir():
        raise UsageError(f"--out {base}: exists and is not a folder")
    first = base / name
    if overwrite or not first.exists():
        return first
    k = 2
    while (base / f"{name}_{k}").exists():
        k += 1
    return base / f"{name}_{k}"


def _evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sr_eval.benchmark import evaluate_dataset, render_text, table_rows, write_reports
    from sr_eval.loading import load_model, pick_device
    from sr_eval.paper_results import paper_rows
    from sr_eval.perceptual import perceptual_metrics
    from sr_eval.runner import Upscaler

    if args.list_models:
        from sr_models import list_models

        print("\n".join(list_models()))
        return 0
    _check_common(args)
    if args.real:
        from sr_eval.real import evaluate_real

        return evaluate_real(args)
    from sr_data.datasets import EVAL_SETS
    from sr_eval.arbitrary_scale import wants_arbitrary

    arbitrary = wants_arbitrary(args.model, args.weights)
    datasets_arg = args.datasets if args.datasets is not None else ("div2k-val" if arbitrary else DEFAULT_DATASETS)
    names = [d.strip().lower() for d in datasets_arg.split(",") if d.strip()]
    if not names:
        raise UsageError("--datasets is empty")
    unknown = [n for n in names if n not in EVAL_SETS]
    if unknown:
        raise UsageError(f"--datasets: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(EVAL_SETS)}")
    if "folder" in names and not args.data_root:
        raise UsageError("--datasets folder needs --data-root (the folder of HR images)")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.crop_border is not None and args.crop_border < 0:
        raise UsageError(f"--crop-border must be >= 0, got {args.crop_border}")
    if args.name is not None and (not args.name.strip() or "/" in args.name or args.name in (".", "..")):
        raise UsageError(f"--name {args.name!r}: must be a plain folder name")
    device = pick_device(args.device)
    check_precision("sr-eval", args.precision, device)
    model = load_model(args.model, None if arbitrary else fixed_scale(args, args.model), args.weights,
                       allow_random_weights=args.allow_random_weights, device=device)
    from sr_eval.arbitrary_scale import is_arbitrary_model

    if is_arbitrary_model(model):  # float scales, Table 5's protocol and layout
        from sr_eval.arbitrary_scale_cli import evaluate_arbitrary_command

        return evaluate_arbitrary_command(args, model, names, device)
    fixed_scale(args, getattr(model, "model_name", args.model))
    note_tile_rounding("sr-eval", model, args.tile, args.tile_overlap)
    scale = int(model.scale)
    label = str(getattr(model, "model_name", args.model or "model"))
    crop = scale if args.crop_border is None else args.crop_border
    perceptual = perceptual_metrics([m.strip() for m in args.perceptual.split(",") if m.strip()], device)
    run_dir = new_run_dir(Path(args.out), args.name or f"{label}_x{scale}", args.overwrite)

    from sr_data import build_eval_dataset

    datasets = []
    for name in names:  # open all first, so a missing folder fails before any long run
        try:
            datasets.append((name, build_eval_dataset(name, root=args.data_root, scale=scale)))
        except (ValueError, OSError) as err:
            raise EvalError(f"dataset {name!r}: {one_line(err)}") from err
    upscaler = Upscaler(model, device, tile=args.tile, tile_overlap=args.tile_overlap, precision=args.precision,
                        self_ensemble=args.self_ensemble, max_memory=args.max_memory,
                        note=lambda m: tqdm.write(m, file=sys.stderr), progress=not args.no_progress, prog="sr-eval")
    results = []
    for name, ds in datasets:
        with tqdm(total=len(ds), desc=name, unit="img", file=sys.stderr, leave=False,
                  disable=args.no_progress) as bar:
            results.append(evaluate_dataset(
                model, ds, name=name, crop_border=crop, y_channel=not args.rgb, device=device,
                max_batch=args.batch_size, perceptual=perceptual, progress=bar.update, upscaler=upscaler,
            ))
    paper = paper_rows(label, scale) if args.compare_paper else []
    if args.compare_paper and not paper:
        print(f"sr-eval: note: no published figures known for {label} x{scale}", file=sys.stderr)
    header, rows = table_rows(f"{label} (ours)", scale, results, paper)
    print(render_text(header, rows), end="")
    for r in results:
        if r.extra:
            print(f"{r.dataset}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.extra.items()))
    tiled = sorted({r["tile"] for res in results for r in res.per_image if r.get("tile")})
    protocol = {
        "y_channel": not args.rgb, "crop_border": crop, "tile": args.tile if args.tile else "auto",
        "tiles_used": tiled or None, "tile_overlap": args.tile_overlap if (args.tile or tiled) else None,
        "precision": args.precision, "self_ensemble": args.self_ensemble,
        "pad_multiple": getattr(model, "pad_multiple", 1), "pad_mode": getattr(model, "pad_mode", "reflect"),
    }
    if tiled and args.tile is None:
        n = sum(1 for res in results for r in res.per_image if r.get("tile"))
        print(f"sr-eval: note: {n} image(s) did not fit the memory budget whole and were tiled "
              f"(tile {', '.join(map(str, tiled))}, overlap {args.tile_overlap}); the JSON lists them", file=sys.stderr)
    meta = {"model": label, "scale": scale, "weights": args.weights, "datasets": names,
            "data_root": args.data_root, "device": str(device), "protocol": protocol,
            "config": getattr(model, "config", None)}
    paths = write_reports(run_dir, f"{label}_x{scale}", label=f"{label} (ours)", scale=scale,
                          results=results, paper=paper, meta=meta)
    print(f"sr-eval: wrote {', '.join(p.name for p in paths.values())} to {run_dir}", file=sys.stderr)
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
