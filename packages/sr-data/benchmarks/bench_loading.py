"""Loader throughput: patches/s for 64x64 LR patches at x4, PNG folders vs packed LMDB vs on-the-fly LR.

Data: BasicSR-style 480x480 HR sub-images (step 240) cut from the embedded sample photographs
(scikit-image), their x4 MATLAB-bicubic LR (120x120) as PNG (compress level 3, as BasicSR's
sub-images), and packed copies (raw and PNG encodings). Each configuration runs a torch DataLoader
(batch 16, shuffled) and counts patches per second after the first batch (worker start-up
excluded). Also measures imresize throughput (numpy CPU, torch CPU, torch CUDA when present).

Usage::

    uv run python packages/sr-data/benchmarks/bench_loading.py                 # full run
    uv run python packages/sr-data/benchmarks/bench_loading.py --patches 320 --workers 1 2
    uv run python packages/sr-data/benchmarks/bench_loading.py --json out.json

Required rate (estimate, to be replaced by sr-train's measured step time): ESC-light x4 forward
takes 13.3 ms for a 1280x720 output (57,600 LR pixels) on an RTX 4090 in FP32 (ESC paper,
Table 2), i.e. about 4.3 M LR px/s; a training step costs about 3x a forward, so about 350
64x64 patches/s on that GPU. An H100 with bf16 autocast is assumed 2-4x faster: about
700-1,400 patches/s. The script reports against 1,500 patches/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from sr_data import build_train_dataset, imresize, sample_images, write_image
from sr_data.packed import write_packed
from sr_data.prepare import crop_positions
from sr_data.stores import FileStore
from sr_data.transforms import bicubic_downscale_uint8

REQUIRED_PATCHES_PER_S = 1500


def make_data(root: Path, scale: int) -> int:
    """HR sub-images + LR folders + packed copies under ``root``; returns the number of images."""
    train = sample_images("train")
    n = 0
    for i in range(len(train)):
        img = train.read(i)
        for top in crop_positions(img.shape[0], 480, 240):
            for left in crop_positions(img.shape[1], 480, 240):
                hr = np.ascontiguousarray(img[top : top + 480, left : left + 480])
                if hr.shape[:2] != (480, 480):
                    continue
                n += 1
                name = f"{n:04d}"
                write_image(root / "hr" / f"{name}.png", hr, compress_level=3)
                write_image(
                    root / f"lr_x{scale}" / f"{name}.png",
                    bicubic_downscale_uint8(hr, scale),
                    compress_level=3,
                )
    for folder in ("hr", f"lr_x{scale}"):
        store, _ = FileStore.from_folder(root / folder)
        write_packed(store, root / "packed_raw" / f"{folder}.lmdb", encoding="raw", workers=1, progress=False)
        write_packed(store, root / "packed_png" / f"{folder}.lmdb", encoding="png", workers=1, progress=False)
    return n


def configs(root: Path, scale: int) -> dict[str, dict]:
    lr = f"lr_x{scale}"
    return {
        "png folders (HR+LR)": {
            "root": root / "hr",
            "lr_root": root / lr,
            "lr_source": "folder",
            "packed": False,
        },
        "packed raw (HR+LR)": {
            "root": root / "packed_raw/hr.lmdb",
            "lr_root": root / f"packed_raw/{lr}.lmdb",
            "lr_source": "folder",
        },
        "packed png (HR+LR)": {
            "root": root / "packed_png/hr.lmdb",
            "lr_root": root / f"packed_png/{lr}.lmdb",
            "lr_source": "folder",
        },
        "png HR + on-the-fly MATLAB LR": {"root": root / "hr", "lr_source": "bicubic", "packed": False},
        "packed raw HR + on-the-fly MATLAB LR": {"root": root / "packed_raw/hr.lmdb", "lr_source": "bicubic"},
        "packed raw HR + on-the-fly PIL LR": {"root": root / "packed_raw/hr.lmdb", "lr_source": "pil"},
    }


def measure_loader(kwargs: dict, scale: int, patch: int, workers: int, patches: int, batch: int) -> float:
    probe = build_train_dataset("folder", scale=scale, patch_size=patch, **kwargs)
    repeat = max(1, -(-(patches + 2 * batch * max(1, workers)) // len(probe)))
    ds = build_train_dataset("folder", scale=scale, patch_size=patch, repeat=repeat, **kwargs)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)  # worker start-up and first batch excluded
    t0 = time.perf_counter()
    count = 0
    while count < patches:
        b = next(it)
        count += b["lr"].shape[0]
    dt = time.perf_counter() - t0
    del it
    return count / dt


def measure_imresize(scale: int, patch: int, device: str) -> dict[str, float]:
    out: dict[str, float] = {}
    hp = patch * scale
    rng = np.random.default_rng(0)
    if device == "cpu":
        x = rng.random((hp, hp, 3))
        imresize(x, scale=1 / scale)
        reps, t0 = 50, time.perf_counter()
        for _ in range(reps):
            imresize(x, scale=1 / scale)
        out[f"numpy float64 {hp}x{hp} -> {patch}x{patch} (patches/s)"] = reps / (time.perf_counter() - t0)
        big = rng.random((1356, 2040, 3))
        t0 = time.perf_counter()
        imresize(big, scale=1 / scale)
        out["numpy float64 2040x1356 DIV2K image x1/4 (images/s)"] = 1 / (time.perf_counter() - t0)
    xt = torch.rand(16 if device == "cpu" else 256, 3, hp, hp, device=device)
    imresize(xt, scale=1 / scale)
    if device == "cuda":
        torch.cuda.synchronize()
    reps, t0 = (5 if device == "cpu" else 20), time.perf_counter()
    for _ in range(reps):
        imresize(xt, scale=1 / scale)
    if device == "cuda":
        torch.cuda.synchronize()
    out[f"torch {device} float32 batch {xt.shape[0]}x3x{hp}x{hp} (patches/s)"] = (
        reps * xt.shape[0] / (time.perf_counter() - t0)
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--patch", type=int, default=64, help="LR patch side")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patches", type=int, default=640, help="patches timed per configuration")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    torch.set_num_threads(1)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    results: dict[str, dict] = {"machine": {"description": machine}, "loader": {}, "imresize": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        n = make_data(root, args.scale)
        print(
            f"# data: {n} HR sub-images 480x480 + LR x{args.scale}, made in {time.perf_counter() - t0:.1f}s"
        )
        print(f"# machine: {machine}")
        print(f"| source | {' | '.join(f'{w} worker(s)' for w in args.workers)} |")
        print(f"|---|{'---|' * len(args.workers)}")
        for name, kw in configs(root, args.scale).items():
            row = {}
            for w in args.workers:
                row[w] = measure_loader(kw, args.scale, args.patch, w, args.patches, args.batch)
            results["loader"][name] = row
            print(f"| {name} | {' | '.join(f'{row[w]:.0f}' for w in args.workers)} |", flush=True)
    png = results["loader"]["png folders (HR+LR)"]
    raw = results["loader"]["packed raw (HR+LR)"]
    for w in args.workers:
        print(f"# packed raw / png folders, {w} worker(s): {raw[w] / png[w]:.1f}x")
    print(
        f"# required for one H100 training esc-light x4 (estimate, see docstring): ~{REQUIRED_PATCHES_PER_S} patches/s"
    )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for k, v in measure_imresize(args.scale, args.patch, dev).items():
            results["imresize"][k] = v
            print(f"# imresize {k}: {v:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
