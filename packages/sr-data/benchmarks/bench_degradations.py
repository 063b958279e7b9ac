"""Real-ESRGAN degradation throughput: degradations (images) per second for a batch of HR patches.

The paper's ESC-Real setting is 48 LR patches of 64x64 at x4, i.e. 48 HR patches of 256x256 degraded
per iteration (``--hr 256``, the default); ``--hr 64`` measures 64x64 HR patches. Each configuration
runs ``--warmup`` calls, then ``--repeats`` timed calls (each synchronised on CUDA) and reports the
median time per batch and images/s at the median and over all timed batches (the per-batch
random resize factor makes batches differ by up to ~6x in cost, as in training), for the torch JPEG (the training default) and optionally the
Pillow JPEG backend. Inputs are random crops of the embedded sample photos. Every call draws from
one seeded generator, so the degradations differ between calls as in training.

Usage::

    uv run python packages/sr-data/benchmarks/bench_degradations.py                  # CPU (+ CUDA if present)
    uv run python packages/sr-data/benchmarks/bench_degradations.py --hr 64 256 --threads 1 --pillow
    uv run python packages/sr-data/benchmarks/bench_degradations.py --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from sr_data import sample_images
from sr_data.degradations import degrade, load_degradation_settings


def _patches(n: int, side: int, seed: int = 0) -> torch.Tensor:
    store = sample_images("train")
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        img = store.read(k % len(store))
        top = int(rng.integers(0, img.shape[0] - side + 1))
        left = int(rng.integers(0, img.shape[1] - side + 1))
        out.append(torch.from_numpy(np.ascontiguousarray(img[top : top + side, left : left + side])))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255


def bench(device: str, batch: int, hr: int, backend: str, warmup: int, repeats: int) -> dict:
    settings = dataclasses.replace(load_degradation_settings("realesrgan-x4plus"), jpeg_backend=backend)
    x = _patches(batch, hr).to(device)
    g = torch.Generator(device=device).manual_seed(0)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        degrade(x, settings, g)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        degrade(x, settings, g)
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"device": device, "batch": batch, "hr": hr, "lr": hr // 4, "jpeg": backend, "threads": torch.get_num_threads(),
            "median_s": med, "min_s": min(times), "max_s": max(times), "images_per_s": batch / med,
            "overall_images_per_s": batch * repeats / sum(times), "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--hr", type=int, nargs="+", default=[256], help="HR patch sides (LR = HR / 4)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--pillow", action="store_true", help="also measure the Pillow JPEG backend")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    backends = ["torch"] + (["pillow"] if args.pillow else [])
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}, threads {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    rows = []
    for device in devices:
        for hr in args.hr:
            for backend in backends:
                r = bench(device, args.batch, hr, backend, args.warmup, args.repeats)
                rows.append(r)
                print(f"{device:5s} batch {r['batch']} HR {hr}x{hr} -> LR {r['lr']}x{r['lr']}, JPEG {backend:6s}: "
                      f"median {r['median_s'] * 1e3:8.1f} ms/batch ({r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}), "
                      f"{r['images_per_s']:8.1f} degradations/s at the median, "
                      f"{r['overall_images_per_s']:8.1f} over all {r['repeats']} batches")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
