"""Training throughput and peak memory of the paper recipes: iet, sst-l and esc, in one run.

One training step is exactly the trainer's: forward (optional bf16 autocast), L1 loss, backward,
Muon/AdamW step with the recipe's parameter groups, EMA update. Inputs are random tensors already on
the device, so the figures exclude data loading. For each model: ``--warmup`` untimed steps, then
``--steps`` timed steps (CUDA-synchronised); we report the median step time as iterations/s and
samples/s, and the peak allocated memory (``torch.cuda.max_memory_allocated``).

Batch per device: the recipes' batches are global (``data.batch_size``) and the official ESC/SST
runs used 4 GPUs, so by default each model runs at its per-GPU share of the official run
(esc 64/4 = 16, sst-l 32/4 = 8); IET's GPU count is not published, so iet runs its whole batch of
60 on one device. ``--batch global`` runs every recipe's whole global batch on one device.

Usage (GPU):  uv run python packages/sr-train/benchmarks/bench_train.py --out bench_train.json
CPU smoke:    uv run python packages/sr-train/benchmarks/bench_train.py --smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sr_train.config import resolve_config
from sr_train.ema import ModelEMA
from sr_train.optim import build_optimizer
from sr_train.trainer import build_model

# model -> (official GPU count of the recipe, or None when unpublished)
OFFICIAL_GPUS: dict[str, int | None] = {"iet": None, "sst-l": 4, "esc": 4}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def bench_model(name: str, *, batch_mode: str, precision: str, warmup: int, steps: int, device: torch.device,
                smoke: bool) -> dict[str, Any]:
    """Time ``steps`` training steps of ``name`` at its recipe's batch and patch size."""
    cfg = resolve_config(name)
    patch, global_batch = cfg["data"]["patch_size"], cfg["data"]["batch_size"]
    gpus = OFFICIAL_GPUS.get(name)
    batch = global_batch if batch_mode == "global" or gpus is None else global_batch // gpus
    if smoke:  # a CPU check that the script runs, not a measurement
        batch, patch = 1, 8
    scale = cfg["model"]["scale"]
    row: dict[str, Any] = {"model": name, "preset": cfg["preset"], "scale": scale, "batch": batch, "patch_lr": patch,
                           "global_batch": global_batch, "official_gpus": gpus, "precision": precision,
                           "muon": cfg["optim"]["muon"]["enabled"]}
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    row["params"] = sum(p.numel() for p in model.parameters())
    opt = build_optimizer(model, cfg["optim"])
    ema = ModelEMA(model, cfg["train"]["ema_decay"])
    lr = torch.rand(batch, 3, patch, patch, device=device)
    hr = torch.rand(batch, 3, patch * scale, patch * scale, device=device)
    use_amp = precision == "bf16"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            sr = model(lr)
        loss = F.l1_loss(sr.float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        sync()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
        return row
    med = statistics.median(times)
    row.update({"step_s_median": med, "it_per_s": 1.0 / med, "samples_per_s": batch / med,
                "step_s_min": min(times), "steps": steps})
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as a Markdown table with a header line naming device, date and commit."""
    out = [f"Training throughput, {meta['device']}, {meta['date']}, commit {meta['commit']}, torch {meta['torch']}",
           "", "| model | preset | batch/device | LR patch | precision | it/s | samples/s | peak GiB |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | {r['preset']} | {r['batch']} | {r['patch_lr']} | {r['precision']} | "
                       f"{r['error']} | | |")
            continue
        mem = f"{r['peak_mem_gib']:.1f}" if "peak_mem_gib" in r else "-"
        out.append(f"| {r['model']} | {r['preset']} | {r['batch']} | {r['patch_lr']} | {r['precision']} | "
                   f"{r['it_per_s']:.2f} | {r['samples_per_s']:.1f} | {mem} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(OFFICIAL_GPUS))
    p.add_argument("--batch", choices=("per-gpu", "global"), default="per-gpu")
    p.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="CPU check: batch 1, 8x8 patches, 1+1 steps")
    p.add_argument("--out", type=Path, help="write the JSON results here (and a .md table beside it)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("bench_train: no CUDA device; run with --smoke for a CPU check", file=sys.stderr)
        return 2
    if args.smoke:
        args.warmup, args.steps, args.precision = 1, 1, args.precision[:1]
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"), "commit": _commit(),
            "torch": torch.__version__, "smoke": args.smoke}
    rows = []
    for name in args.models:
        for prec in args.precision:
            row = bench_model(name, batch_mode=args.batch, precision=prec, warmup=args.warmup, steps=args.steps,
                              device=device, smoke=args.smoke)
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = markdown(rows, meta)
    print(table)
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
