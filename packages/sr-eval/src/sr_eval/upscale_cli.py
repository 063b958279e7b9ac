"""The ``sr-upscale`` command: upscale image files and folders with a trained model.

    sr-upscale photos/ extra.jpg -o out/ --model esc --weights ESC_x4.pth
    sr-upscale scan.png -o scan_big.png --weights ESC_x4.pth --outscale 3

Inputs are files or folders (PNG, JPEG, WebP, BMP, TIFF; folders are not searched recursively).
Outputs go to ``OUT/<stem><suffix>.<ext>``: the suffix defaults to ``_x<outscale>`` (``_x4``), the
format to PNG (``--format``; ``same`` keeps each input's). With one input file ``-o`` may name the
output file itself.

Safety (nothing the user had is lost):

* an output is never written onto an input: ``-o`` naming an input folder, or any output path that
  resolves to an input file, is refused before anything runs, ``--overwrite`` or not;
* every output name is decided before the first image: two inputs mapping to one output
  (``a.png`` and ``a.jpg``) is an error listing them, so ``--overwrite`` can never replace a file
  this run wrote; existing outputs are left alone (reported) unless ``--overwrite``;
* each file is written to a temporary name and renamed, so an interrupted run leaves no half image;
* memory: each image's peak is estimated before it runs (:mod:`sr_eval.memory`); one that does not
  fit the free memory is tiled (one line says so), with a per-tile progress bar and ETA;
* each image is isolated: a file that cannot be read, is too small, does not fit or fails otherwise
  is reported and skipped; the failures are listed at the end, exit status 1 if there were any
  (2 for a usage error, before anything is written).

Image kinds (:mod:`sr_eval.image_files`): RGBA with the alpha upscaled separately (``--alpha``),
grayscale saved as grayscale, 16-bit PNG/TIFF in and out, ``--outscale`` for any final size,
``--quality`` for JPEG/WebP and ``--lossless`` for WebP.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sr_eval.cli import (
    OneLineParser,
    _check_common,
    add_inference_args,
    check_precision,
    note_tile_rounding,
    run_command,
)
from sr_eval.image_files import (
    DEFAULT_QUALITY,
    EXTENSION_FORMATS,
    FORMAT_EXTENSIONS,
    INPUT_EXTENSIONS,
)
from sr_eval.loading import EvalError, UsageError, one_line

OUTPUT_FORMATS = (*FORMAT_EXTENSIONS, "same")


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="sr-upscale",
        description="Upscale images with a super-resolution model. Never writes over an input; keeps going past "
        "bad files and lists them at the end (exit status 1 if any failed, 2 for a usage error).",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output folder (created); or an output file name (.png, .jpg, .webp, .tif, .bmp) when "
                   "there is one input file")
    add_inference_args(p)
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                   help="output format (default png, or the extension of an -o file name; same: keep the input's)")
    p.add_argument("--suffix", default=None, help="text added to output file names (default _x<outscale>, e.g. _x4)")
    p.add_argument("--outscale", type=float, default=None,
                   help="final scale relative to the input (any value > 0; default: the model's): the model's "
                   "output is resized (bicubic, antialiased) to round(size * outscale)")
    p.add_argument("--size", default=None, metavar="WxH",
                   help="arbitrary-scale models (esc-lte) only: render every output at this size, e.g. 1920x1080")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help=f"JPEG/WebP quality 1-100 (default {DEFAULT_QUALITY})")
    p.add_argument("--lossless", action="store_true", help="lossless WebP")
    p.add_argument("--alpha", choices=("model", "bicubic"), default="model",
                   help="how a transparent alpha channel is upscaled: by the model on the alpha replicated to RGB "
                   "(default, as Real-ESRGAN) or bicubic")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (never inputs, never a file this run wrote)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list-models", action="store_true", help="print the registered model names and exit")
    return p


def collect_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files named or found (non-recursively, sorted) in folders; plus (path, reason) failures."""
    files: list[Path] = []
    failures: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir()
                           if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in INPUT_EXTENSIONS)
            if not found:
                failures.append((str(p), "folder has no PNG/JPEG/WebP/BMP/TIFF images"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            failures.append((str(p), "no such file or folder"))
    return files, failures


def _parse_size(text: str) -> tuple[int, int]:
    """``--size WxH`` -> (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1080") from None
    if w < 1 or h < 1:
        raise UsageError(f"--size {text!r}: sides must be positive")
    return h, w


def _format_scale(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _is_file_target(out: Path) -> bool:
    """-o names a file (an image extension) rather than a folder (an existing folder is a folder)."""
    if out.is_dir():
        return False
    suffix = out.suffix.lower()
    if suffix in EXTENSION_FORMATS:
        return True
    from PIL import Image

    if suffix in Image.registered_extensions():
        raise UsageError(f"-o {out}: cannot write {suffix} files; name a .png, .jpg, .webp, .tif or .bmp file, or a folder")
    return False


@dataclass
class Job:
    """One input and the output planned for it."""

    src: Path
    dst: Path
    fmt: str
    skip: str = ""  # why it will not be written (e.g. the output exists), decided before any work


def _key(p: Path) -> str:
    """Comparison key of a path: resolved, case-folded (case-insensitive file systems collide too)."""
    return os.path.normcase(str(p.resolve())).casefold()


def plan_jobs(args: argparse.Namespace, files: list[Path], scale_text: str) -> tuple[list[Job], bool]:
    """Every output path, checked before anything is written; returns (jobs, single-file output).

    UsageError for an output that would be an input (file or folder), two inputs sharing an output,
    or an -o file name with several inputs.
    """
    out = Path(args.output)
    file_target = _is_file_target(out)
    input_files = {_key(f): f for f in files}
    input_dirs = {_key(Path(i)): Path(i) for i in args.inputs if Path(i).is_dir()}
    if file_target:
        if len(files) != 1 or len(args.inputs) != 1 or Path(args.inputs[0]).is_dir():
            raise UsageError(f"-o {out} names a file, but there are {len(files)} input images; give a folder")
        fmt = EXTENSION_FORMATS[out.suffix.lower()]
        if args.format not in (None, fmt, "same"):
            raise UsageError(f"--format {args.format} contradicts -o {out}")
        jobs = [Job(files[0], out, fmt)]
    else:
        if _key(out) in input_dirs:
            raise UsageError(f"-o {out} is an input folder: outputs are never written among the inputs; "
                             "choose another output folder")
        if out.exists() and not out.is_dir():
            raise UsageError(f"-o {out} exists and is not a folder")
        suffix = args.suffix if args.suffix is not None else f"_x{scale_text}"
        jobs = []
        for src in files:
            fmt = EXTENSION_FORMATS.get(src.suffix.lower(), "png") if args.format == "same" else (args.format or "png")
            ext = src.suffix.lower() if args.format == "same" else FORMAT_EXTENSIONS[fmt]
            jobs.append(Job(src, out / f"{src.stem}{suffix}{ext}", fmt))
    by_dst: dict[str, list[Job]] = {}
    for job in jobs:
        by_dst.setdefault(_key(job.dst), []).append(job)
        if _key(job.dst) in input_files or (job.dst.exists() and any(_same_file(job.dst, f) for f in files)):
            raise UsageError(f"refusing to write {job.dst}: it is one of the inputs (outputs never replace inputs, "
                             "--overwrite or not); choose another -o or --suffix")
    clashes = [js for js in by_dst.values() if len(js) > 1]
    if clashes:
        js = clashes[0]
        hint = ("--format same keeps each input's extension" if len({j.src.stem for j in js}) == 1
                and len({j.src.suffix.lower() for j in js}) == len(js) else
                "upscale them into separate -o folders")
        more = f" ({len(clashes) - 1} more output(s) clash)" if len(clashes) > 1 else ""
        raise UsageError(f"{js[0].dst} would be written from {len(js)} inputs: "
                         f"{', '.join(str(j.src) for j in js)}{more}; {hint}, or rename them")
    for job in jobs:
        if job.dst.exists() and not args.overwrite:
            job.skip = "output exists; not replaced (use --overwrite to replace it)"
        elif job.dst.is_dir():
            job.skip = "output path is a folder"
    return jobs, file_target


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def _resize(x, size: tuple[int, int]):
    """(B, C, H, W) float -> (B, C, *size), bicubic with antialiasing, clamped to [0, 1]."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)


def _upscale_one(job: Job, upscaler, args: argparse.Namespace, device, outscale: float | None) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from sr_eval.image_files import encode, load, to_luma

    img = load(job.src)
    if job.fmt in ("jpg", "bmp") and img.alpha is not None:
        raise EvalError(f"has transparent pixels, which {job.fmt.upper()} cannot store; use --format png or webp")
    h, w = img.rgb.shape[:2]
    lr = torch.from_numpy(img.rgb).permute(2, 0, 1).unsqueeze(0).to(device)
    sr, _info = upscaler(lr, name=job.src.name)
    del lr
    s = int(upscaler.model.scale)
    size = (round(h * outscale), round(w * outscale)) if outscale is not None else (h * s, w * s)
    if outscale is None and hasattr(upscaler, "target_size"):  # arbitrary-scale models render their size
        size = upscaler.target_size(h, w)
    if min(size) < 1:
        raise EvalError(f"--outscale {outscale} makes a {w}x{h} image smaller than one pixel")
    sr = _resize(sr, size)
    rgb = np.ascontiguousarray(sr[0].permute(1, 2, 0).cpu().numpy())
    del sr
    alpha = None
    if img.alpha is not None:
        a = torch.from_numpy(img.alpha)[None, None].to(device)
        if args.alpha == "model":
            a_sr, _ = upscaler(a.expand(1, 3, h, w).contiguous(), name=f"{job.src.name} (alpha)")
            a_out = _resize(a_sr, size)[0].permute(1, 2, 0).cpu().numpy()
            alpha = to_luma(a_out).clip(0, 1).astype(np.float32)
        else:
            alpha = F.interpolate(a, size=size, mode="bicubic", align_corners=False,
                                  antialias=True).clamp_(0, 1)[0, 0].cpu().numpy()
    data = encode(rgb, alpha, fmt=job.fmt, has_alpha=img.has_alpha, gray=img.gray, bits=img.bits,
                  quality=args.quality, lossless=args.lossless, icc=img.icc, name=str(job.src))
    _atomic_write(job.dst, data)


def _upscale(args: argparse.Namespace) -> int:
    if args.list_models:
        from sr_models import list_models

        print("\n".join(list_models()))
        return 0
    if not args.inputs:
        raise UsageError("give at least one INPUT image or folder (or --list-models)")
    if not args.output:
        raise UsageError("-o/--output is required (a folder, or a file name for one input)")
    _check_common(args)
    if args.outscale is not None and not args.outscale > 0:
        raise UsageError(f"--outscale must be positive, got {args.outscale}")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in 1..100, got {args.quality}")

    import torch
    from tqdm import tqdm

    from sr_eval.loading import load_model, pick_device
    from sr_eval.runner import Upscaler

    files, failures = collect_inputs(args.inputs)
    if not files:
        reasons = "; ".join(f"{p}: {r}" for p, r in failures)
        raise EvalError(f"no input images ({reasons})" if reasons else "no input images")
    device = pick_device(args.device)
    from sr_eval.arbitrary_scale import ArbitraryUpscaler, is_arbitrary_model, wants_arbitrary
    from sr_eval.cli import fixed_scale

    if isinstance(args.scale, tuple):
        raise UsageError(f"--scale {args.scale!r}: give one scale")
    size = _parse_size(args.size) if args.size is not None else None
    if size is not None and args.scale is not None:
        raise UsageError("give --scale or --size, not both")
    arbitrary = wants_arbitrary(args.model, args.weights)
    scale_hint = args.outscale if args.outscale is not None else args.scale
    if size is not None and args.outscale is None:
        scale_text = f"{size[1]}x{size[0]}"
    else:
        scale_text = _format_scale(scale_hint) if scale_hint is not None else None
    if scale_text is not None:  # output names can be checked before the (slow) model load
        plan_jobs(args, files, scale_text)
    model = load_model(args.model, None if arbitrary else fixed_scale(args, args.model), args.weights,
                       allow_random_weights=args.allow_random_weights, device=device)
    check_precision("sr-upscale", args.precision, device)
    scale = int(model.scale)
    if is_arbitrary_model(model):
        if args.self_ensemble or args.precision != "fp32":
            raise UsageError("--self-ensemble and --precision are not available for arbitrary-scale models "
                             "(they render in fp32, once)")
        render = float(args.scale) if args.scale is not None else float(scale)
        outscale = args.outscale
        try:
            upscaler_any: object = ArbitraryUpscaler(
                model, scale=None if size else render, size=size, tile=args.tile, tile_overlap=args.tile_overlap,
                max_memory=args.max_memory, note=lambda m: tqdm.write(m, file=sys.stderr))
        except ValueError as err:
            raise UsageError(str(err)) from None
        if scale_text is None:
            scale_text = _format_scale(render)
        jobs, single = plan_jobs(args, files, scale_text)
    else:
        fixed_scale(args, getattr(model, "model_name", args.model))
        if size is not None:
            raise UsageError("--size needs an arbitrary-scale model (esc-lte); use --outscale to resize the output")
        note_tile_rounding("sr-upscale", model, args.tile, args.tile_overlap)
        outscale = None if args.outscale is None or args.outscale == scale else args.outscale
        jobs, single = plan_jobs(args, files, _format_scale(args.outscale if args.outscale is not None else scale))
        upscaler_any = None
    failures += [(str(j.src), j.skip) for j in jobs if j.skip]
    todo = [j for j in jobs if not j.skip]

    def note(msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)

    upscaler = upscaler_any or Upscaler(model, device, tile=args.tile, tile_overlap=args.tile_overlap,
                                        precision=args.precision, self_ensemble=args.self_ensemble,
                                        max_memory=args.max_memory, note=note, progress=not args.no_progress)
    written: set[str] = set()
    done = 0
    for job in tqdm(todo, desc="upscaling", unit="img", file=sys.stderr, disable=args.no_progress or not todo):
        try:
            if _key(job.dst) in written:  # cannot happen after plan_jobs; kept as the last guard
                raise EvalError(f"{job.dst} was already written by this run")
            _upscale_one(job, upscaler, args, device, outscale)
            written.add(_key(job.dst))
            done += 1
        except KeyboardInterrupt:
            raise
        except Exception as err:
            if args.debug:
                import traceback

                traceback.print_exc()
            msg = one_line(err, 300)
            if isinstance(err, OSError) and err.strerror:
                msg = f"{err.filename or job.dst}: {err.strerror}"
            elif isinstance(err, (RuntimeError, MemoryError)) and _oom_text(err):
                msg = f"out of memory ({one_line(err, 160)}); try --max-memory lower or --tile"
            failures.append((str(job.src), msg.removeprefix(f"{job.src}: ")))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    where = str(jobs[0].dst) if single else f"{Path(args.output)}{os.sep}"
    if single:
        print(f"sr-upscale: {'wrote ' + where if done else 'wrote nothing'}", file=sys.stderr)
    else:
        print(f"sr-upscale: wrote {done} of {len(jobs)} image(s) to {where}", file=sys.stderr)
    if failures:
        print(f"sr-upscale: {len(failures)} not written:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _oom_text(err: BaseException) -> bool:
    from sr_eval.inference import is_oom

    return is_oom(err)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sr-upscale``; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_command("sr-upscale", lambda: _upscale(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
