"""The ``sr-data`` command: prepare, pack, verify, download, check.

Every failure prints one line ``sr-data: error: ...`` to stderr and exits with status 2 for usage
errors (a bad or missing option: the message names it), 1 for data errors (a missing folder, a bad
image, a stale or truncated packed file, out of memory, an OS error) and 130 on Ctrl-C; no
tracebacks (``SR_DATA_DEBUG=1`` shows one for unexpected errors). Skipped bad images are reported
as one warning line. ``check`` decodes every image (``--fast``: headers only).

Examples::

    sr-data prepare subimages datasets/DIV2K/DIV2K_train_HR datasets/DIV2K/DIV2K_train_HR_sub
    sr-data prepare subimages datasets/DIV2K/DIV2K_train_LR_bicubic/X4 datasets/DIV2K/X4_sub --scale 4
    sr-data prepare lr datasets/DiverSeg-IP/HR datasets/DiverSeg-IP/X4 --scale 4
    sr-data prepare pack datasets/DIV2K/DIV2K_train_HR_sub datasets/DIV2K/DIV2K_train_HR_sub.lmdb
    sr-data prepare pack datasets/DIV2K/DIV2K_train_HR_sub datasets/DIV2K/DIV2K_train_HR_sub.lmdb --replace
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


class UsageError(ValueError):
    """A bad option value; printed as one line, exit status 2."""


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
    p.add_argument("--replace", action="store_true",
                   help="re-pack over an earlier packed copy OUT (e.g. one refused as out of date)")
    _add_common(p)

    p = sub.add_parser("verify", help="check a packed file: size against its header, every value against its manifest")
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
    p.add_argument("--load", type=int, default=1, help="also load and print this many items (default 1)")
    p.add_argument("--fast", action="store_true", help="check headers only (default: decode every image)")
    p.add_argument("--workers", type=int, default=_workers_default(), help="decoding threads (default: min(8, CPUs))")
    p.add_argument("--no-packed", action="store_true", help="read the folders even when a <folder>.lmdb copy exists")
    p.add_argument("--on-bad-image", choices=("error", "skip"), default="error")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _validate(args: argparse.Namespace) -> None:
    """UsageError (exit 2) for option values no command can use, before anything is read or written."""

    def positive(flag: str, value: int | None) -> None:
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")

    positive("--workers", getattr(args, "workers", None))
    if args.command == "prepare" and args.what == "subimages":
        for flag, v in (("--crop-size", args.crop_size), ("--step", args.step), ("--scale", args.scale)):
            positive(flag, v)
        if args.thresh_size < 0:
            raise UsageError(f"--thresh-size must be >= 0, got {args.thresh_size}")
        if args.crop_size % args.scale or args.step % args.scale:
            raise UsageError(f"--crop-size {args.crop_size} and --step {args.step} must be multiples of --scale {args.scale}")
    elif args.command == "prepare" and args.what == "lr":
        if args.scale < 2:
            raise UsageError(f"--scale must be an integer >= 2, got {args.scale}")
        if args.name_tmpl is not None and "{}" not in args.name_tmpl:
            raise UsageError(f"--name-tmpl {args.name_tmpl!r} must contain {{}} (the HR name)")
    elif args.command == "check":
        positive("--scale", args.scale)
        positive("--patch-size", args.patch_size)
        if args.load < 0:
            raise UsageError(f"--load must be >= 0, got {args.load}")
        if args.name.lower() == "folder" and args.root is None:
            raise UsageError("--root is required for the 'folder' dataset (the folder of HR images)")
        if args.name.lower() == "folder" and args.lr_source == "folder" and args.lr_root is None:
            raise UsageError("--lr-source folder with the 'folder' dataset needs --lr-root (the folder of LR images)")


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
            on_bad_image=args.on_bad_image, skipped=skipped, replace=args.replace,
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


def _decode_all(ds, workers: int, progress: bool) -> tuple[int, list[tuple[str, str]]]:
    """Decode every HR (and LR) image the dataset uses; returns (images decoded, bad (file, reason))."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from sr_data.errors import ImageReadError

    jobs = []
    for hi, li in ds.items:
        jobs.append((ds.hr_store, hi))
        if li is not None and ds.lr_store is not None:
            jobs.append((ds.lr_store, li))
    jobs = list({(id(st), i): (st, i) for st, i in jobs}.values())  # each image once

    def one(job) -> tuple[str, str] | None:
        st, i = job
        try:
            st.read(i)
        except ImageReadError as exc:
            return st.describe(i), exc.reason
        return None

    bad: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for res in tqdm(pool.map(one, jobs), total=len(jobs), desc="decoding", unit="img",
                        disable=not progress, file=sys.stderr):
            if res is not None:
                bad.append(res)
    return len(jobs), bad


def _cmd_check(args: argparse.Namespace) -> int:
    from sr_data.datasets import build_eval_dataset, build_train_dataset
    from sr_data.errors import DataError

    packed = False if args.no_packed else None
    if args.kind == "train":
        ds = build_train_dataset(
            args.name, root=args.root, scale=args.scale, patch_size=args.patch_size,
            lr_source=args.lr_source or "bicubic", lr_root=args.lr_root, lr_tmpl=args.lr_tmpl,
            on_bad_image=args.on_bad_image, packed=packed,
        )  # fmt: skip
    else:
        ds = build_eval_dataset(
            args.name, root=args.root, scale=args.scale, lr_source=args.lr_source or "auto",
            lr_root=args.lr_root, lr_tmpl=args.lr_tmpl, on_bad_image=args.on_bad_image, packed=packed,
        )  # fmt: skip
    n_images = len(ds.items)
    _report_skipped(ds.skipped)
    where = f"{ds.hr_store.location}" + (f" + {ds.lr_store.location}" if ds.lr_store is not None else "")
    if args.fast:
        decoded, bad = 0, []
    else:
        decoded, bad = _decode_all(ds, args.workers, not args.no_progress)
    if bad:
        first = "; ".join(f"{p}: {r}" for p, r in bad[:3])
        if args.on_bad_image == "error":
            raise DataError(f"{len(bad)} of {decoded} images fail to decode: {first}")
        print(
            f"sr-data: warning: {len(bad)} of {decoded} images fail to decode: {first}; training with "
            "--on-bad-image skip would replace each by another image (warning every time): fix or remove them",
            file=sys.stderr,
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(min(args.load, len(ds))):
            item = ds[i]
            print(f"item {i}: {item['name']} lr {tuple(item['lr'].shape)} hr {tuple(item['hr'].shape)}")
    for w in caught:  # e.g. a bad image replaced by the next one under --on-bad-image skip
        print(f"sr-data: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    how = "headers checked, pixels not decoded (--fast)" if args.fast else f"{decoded - len(bad)} of {decoded} decoded"
    print(f"{args.name} ({args.kind}, x{args.scale}) from {where}: {n_images} images, {len(ds)} items; {how}")
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
        _validate(args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped files are reported once, by the command
            return handlers[args.command](args)
    except KeyboardInterrupt:
        print("sr-data: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sr-data check ... | head`
        _silence_stdout()
        return 0
    except UsageError as exc:
        print(f"sr-data: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("sr-data: error: out of memory (use fewer --workers)", file=sys.stderr)
        return 1
    except (DataError, DownloadError, ValueError, TypeError, OSError, lmdb.Error) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror and exc.filename:
            msg = f"{exc.filename}: {exc.strerror}"
        print(f"sr-data: error: {msg}", file=sys.stderr)
        return 1
    except Exception as exc:  # last resort: still one line; SR_DATA_DEBUG=1 re-raises for a traceback
        if os.environ.get("SR_DATA_DEBUG"):
            raise
        msg = " ".join(str(exc).split())
        if "can't allocate memory" in msg or "out of memory" in msg.lower():
            print("sr-data: error: out of memory (use fewer --workers)", file=sys.stderr)
            return 1
        print(
            f"sr-data: internal error: {type(exc).__name__}: {msg} (set SR_DATA_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
