"""The ``sr-upscale`` command: upscale image files and folders with a trained model.

    sr-upscale photos/ extra.jpg -o out/ --model esc --weights ESC_x4.pth --tile 256 --precision bf16

Inputs are files or folders (PNG, JPEG, WebP, BMP, TIFF; folders are not searched recursively).
Outputs go to ``OUT/<name>.<ext>`` (``--format``, default png; ``same`` keeps the input's format).
A file that cannot be read, is too small for the model or fails otherwise is reported and skipped;
the failures are listed at the end and the exit status is 1 if there were any.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sr_eval.cli import _check_common, add_inference_args, run_command
from sr_eval.loading import EvalError, one_line

INPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
OUTPUT_FORMATS = ("png", "jpg", "webp", "same")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sr-upscale",
        description="Upscale images with a super-resolution model. Keeps going past bad files and "
        "lists them at the end (exit status 1 if any failed).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (created); or an output file name when there is one input file")
    add_inference_args(p)
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="png", help="output format (default png)")
    p.add_argument("--suffix", default="", help="text added to output file names, e.g. _x4")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def collect_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named or found (non-recursively, sorted) in folders; plus (path, reason) failures."""
    files: list[Path] = []
    failures: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in INPUT_EXTENSIONS)
            if not found:
                failures.append((str(p), "folder has no PNG/JPEG/WebP/BMP/TIFF images"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            failures.append((str(p), "no such file or folder"))
    return files, failures


def _output_path(src: Path, out: Path, single_file: bool, fmt: str, suffix: str) -> Path:
    if single_file and out.suffix.lower() in INPUT_EXTENSIONS:
        return out
    ext = src.suffix.lower().lstrip(".") if fmt == "same" else fmt
    return out / f"{src.stem}{suffix}.{ext}"


def _upscale(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from sr_data import read_image, write_image
    from sr_eval.inference import upscale_tensor
    from sr_eval.loading import load_model, pick_device

    _check_common(args)
    files, failures = collect_inputs(args.inputs)
    if not files:
        reasons = "; ".join(f"{p}: {r}" for p, r in failures)
        raise EvalError(f"no input images ({reasons})" if reasons else "no input images")
    device = pick_device(args.device)
    model = load_model(args.model, args.scale, args.weights,
                       allow_random_weights=args.allow_random_weights, device=device)
    out = Path(args.output)
    single = len(files) == 1 and len(args.inputs) == 1 and Path(args.inputs[0]).is_file()
    if not (single and out.suffix.lower() in INPUT_EXTENSIONS):
        out.mkdir(parents=True, exist_ok=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    for src in tqdm(files, desc="upscaling", unit="img", file=sys.stderr):
        dst = _output_path(src, out, single, args.format, args.suffix)
        try:
            if dst.exists() and not args.overwrite:
                raise EvalError(f"{dst} exists (use --overwrite)")
            img = read_image(src)  # uint8 HWC RGB; raises naming the file
            if img.ndim != 3 or img.shape[2] != 3:
                raise EvalError(f"expected 3 colour channels, got shape {img.shape}")
            lr = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div_(255).unsqueeze(0).to(device)
            sr = upscale_tensor(model, lr, tile=args.tile, tile_overlap=args.tile_overlap,
                                precision=args.precision, self_ensemble=args.self_ensemble)
            arr = sr[0].mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            write_image(dst, arr)
            done += 1
        except Exception as err:
            if args.debug:
                import traceback

                traceback.print_exc()
            msg = one_line(err)
            failures.append((str(src), msg.removeprefix(f"{src}: ")))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"sr-upscale: wrote {done} image(s) to {out if not single else out.parent}", file=sys.stderr)
    if failures:
        print(f"sr-upscale: {len(failures)} failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sr-upscale``; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_command("sr-upscale", lambda: _upscale(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
