"""The ``sr-data`` command: prepare, pack, verify, download, check.

Every failure prints one line ``sr-data: error: ...`` to stderr and exits with status 1 (2 for
usage errors, 130 on Ctrl-C); no tracebacks (``SR_DATA_DEBUG=1`` shows one for unexpected errors). Skipped bad images are reported as one warning line.

Examples::

    sr-data prepare subimages datasets/DIV2K/DIV2K_train_HR datasets/DIV2K/DIV2K_train_HR_sub
    sr-data prepare subimages datasets/DIV2K/DIV2K_train_LR_bicubic/X4 datasets/DIV2K/X4_sub --scale 4
    sr-data prepare lr datasets/DiverSeg-IP/HR datasets/DiverSeg-IP/X4 --scale 4
    sr-data prepare pack datasets/DIV2K/DIV2K_train_HR_sub datasets/DIV2K/DIV2K_train_HR_sub.lmdb
    sr-data verify datasets/DIV2K/DIV2K_train_HR_sub.lmdb
    sr-data download div2k --root datasets
    sr-data check df2k --root datasets --scale 4 --lr-source folder
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

__all__ = ["main"]


def _workers_default() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers", type=int, default=_workers_default(), help="processes (default: min(8, CPUs))"
    )
    p.add_argument("--recursive", action="store_true", help="include images in sub-folders")
    p.add_argument(
        "--on-bad-image",
        choices=("error", "skip"),
        default="error",
        help="stop at the first bad file (default) or skip bad files and count them",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sr-data", description="SR data preparation and checks.")
    sub = ap.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="sub-images, LR folders, packed files").add_subparsers(
        dest="what", required=True
    )
    p = prep.add_parser("subimages", help="BasicSR sub-image extraction (HR 480/240)")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--crop-size", type=int, default=480, help="HR crop size (divided by --scale)")
    p.add_argument("--step", type=int, default=240, help="HR step (divided by --scale)")
    p.add_argument("--thresh-size", type=int, default=0)
    p.add_argument("--scale", type=int, default=1, help="1 for an HR folder; s for an LR xs folder")
    _add_common(p)

    p = prep.add_parser("lr", help="MATLAB-bicubic LR folder from an HR folder")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--name-tmpl", default=None, help="LR name template (default '{}x<scale>')")
    _add_common(p)

    p = prep.add_parser("pack", help="pack a folder into the LMDB format")
    p.add_argument("src")
    p.add_argument("out", help="new directory, conventionally <src>.lmdb")
    p.add_argument("--encoding", choices=("raw", "png"), default="raw")
    _add_common(p)

    p = sub.add_parser("verify", help="re-hash a packed file against its manifest")
    p.add_argument("path")

    p = sub.add_parser("download", help="download DIV2K or Flickr2K (resumable, verified)")
    p.add_argument("name", choices=("div2k", "flickr2k"))
    p.add_argument("--root", default=None, help="data root (default $SR_DATA_ROOT or ./datasets)")
    p.add_argument("--base-url", default=None, help="a mirror replacing the documented host")
    p.add_argument("--files", nargs="*", default=None, help="only these archive names")
    p.add_argument(
        "--checksums", default=None, help="file of 'name sha256' lines overriding the built-in ones"
    )
    p.add_argument("--no-extract", action="store_true")
    p.add_argument("--delete-archives", action="store_true", help="delete archives after extraction")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("check", help="build a dataset and report its size and skipped files")
    p.add_argument("name")
    p.add_argument("--root", default=None)
    p.add_argument("--kind", choices=("train", "eval"), default="train")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=64, help="LR patch (train)")
    p.add_argument("--lr-source", default=None, help="train: bicubic|pil|folder; eval: auto|bicubic|folder")
    p.add_argument("--lr-root", default=None)
    p.add_argument("--lr-tmpl", default="{}")
    p.add_argument("--load", type=int, default=1, help="also load this many items")
    p.add_argument("--on-bad-image", choices=("error", "skip"), default="error")
    return ap


def _report_skipped(skipped: Sequence[tuple[str, str]]) -> None:
    if skipped:
        first = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        print(f"sr-data: warning: skipped {len(skipped)} bad file(s): {first}", file=sys.stderr)


def _cmd_prepare(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.what == "subimages":
        from sr_data.prepare import extract_subimages

        rep = extract_subimages(
            args.src, args.out, crop_size=args.crop_size, step=args.step, thresh_size=args.thresh_size,
            scale=args.scale, workers=args.workers, recursive=args.recursive, on_bad_image=args.on_bad_image,
            progress=progress,
        )  # fmt: skip
        print(f"wrote {rep.written} sub-images to {args.out}")
    elif args.what == "lr":
        from sr_data.prepare import make_lr_folder

        rep = make_lr_folder(
            args.src, args.out, scale=args.scale, name_tmpl=args.name_tmpl, workers=args.workers,
            recursive=args.recursive, on_bad_image=args.on_bad_image, progress=progress,
        )  # fmt: skip
        print(f"wrote {rep.written} LR x{args.scale} images to {args.out}")
    else:
        from sr_data.packed import write_packed
        from sr_data.stores import FileStore

        store, skipped = FileStore.from_folder(
            args.src, recursive=args.recursive, on_bad_image=args.on_bad_image
        )
        before = len(skipped)
        write_packed(
            store, args.out, encoding=args.encoding, workers=args.workers, progress=progress,
            on_bad_image=args.on_bad_image, skipped=skipped,
        )  # fmt: skip
        print(f"packed {len(store) - (len(skipped) - before)} images into {args.out}")
        _report_skipped(skipped)
        return 0
    _report_skipped(rep.skipped)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from sr_data.packed import verify_packed

    problems = verify_packed(args.path)
    if problems:
        print(
            f"sr-data: error: {args.path}: {len(problems)} problem(s); first: {problems[0]}", file=sys.stderr
        )
        return 1
    print(f"{args.path}: OK")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from sr_data.datasets import default_root
    from sr_data.download import download_collection, read_checksums

    paths = download_collection(
        args.name,
        args.root or default_root(),
        base_url=args.base_url,
        files=args.files,
        checksums=read_checksums(args.checksums) if args.checksums else None,
        keep_archives=not args.delete_archives,
        do_extract=not args.no_extract,
        timeout=args.timeout,
        progress=not args.no_progress,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(f"{args.name}: {len(paths)} archive(s) downloaded and verified")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from sr_data.datasets import build_eval_dataset, build_train_dataset

    if args.kind == "train":
        ds = build_train_dataset(
            args.name, root=args.root, scale=args.scale, patch_size=args.patch_size,
            lr_source=args.lr_source or "bicubic", lr_root=args.lr_root, lr_tmpl=args.lr_tmpl,
            on_bad_image=args.on_bad_image,
        )  # fmt: skip
        n_images = len(ds.items)
    else:
        ds = build_eval_dataset(
            args.name, root=args.root, scale=args.scale, lr_source=args.lr_source or "auto",
            lr_root=args.lr_root, lr_tmpl=args.lr_tmpl, on_bad_image=args.on_bad_image,
        )  # fmt: skip
        n_images = len(ds)
    for i in range(min(args.load, len(ds))):
        item = ds[i]
        print(f"item {i}: {item['name']} lr {tuple(item['lr'].shape)} hr {tuple(item['hr'].shape)}")
    print(f"{args.name} ({args.kind}, x{args.scale}): {n_images} images, {len(ds)} items")
    _report_skipped(ds.skipped)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sr-data`` console script; returns the exit status."""
    import lmdb

    from sr_data.download import DownloadError
    from sr_data.errors import DataError

    args = _parser().parse_args(argv)
    handlers = {
        "prepare": _cmd_prepare,
        "verify": _cmd_verify,
        "download": _cmd_download,
        "check": _cmd_check,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped files are reported once, by the command
            return handlers[args.command](args)
    except KeyboardInterrupt:
        print("sr-data: interrupted", file=sys.stderr)
        return 130
    except (DataError, DownloadError, ValueError, TypeError, OSError, lmdb.Error) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"sr-data: error: {msg}", file=sys.stderr)
        return 1
    except Exception as exc:  # last resort: still one line; SR_DATA_DEBUG=1 re-raises for a traceback
        if os.environ.get("SR_DATA_DEBUG"):
            raise
        msg = " ".join(str(exc).split())
        print(
            f"sr-data: internal error: {type(exc).__name__}: {msg} (set SR_DATA_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
