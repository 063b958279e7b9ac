"""Latency and peak memory of IET / IET-light inference, next to the paper's Table 6 and to SST / ESC
measured in the same run.

For every (model, scale, output size) it builds the registry model, feeds one LR image whose SR
output is the requested size, runs ``--warmup`` untimed calls, then ``--iters`` calls timed one by
one with CUDA events and reports the median (p10, p90); the peak memory is
``torch.cuda.max_memory_allocated`` over one call (weights included), also given minus the memory
resident before the call. On CPU it times with ``perf_counter`` and reports no memory: that is
only a smoke test of the script, never a figure to record.

It also checks IET's memory scaling: the peak at the base size and at twice the pixels (the output
height doubled), whose ratio must stay <= 2.2 (memory linear in the number of pixels), and the peak
of one whole-image x2 pass with a 1280 x 720 output (target: within 24 GB).

Paper reference (IET supplementary, Table 6; RTX 5090; the text of section G says the times were
taken "with an output resolution of 256 x 256", while the FLOPs of the same table are for a larger
output): IET x2 147 ms, x3 106 ms, x4 64 ms. Different GPU and probably a different output size:
compare ratios between models measured in the same run, not absolute numbers.

Usage (GPU)::

    uv run python packages/sr-models/benchmarks/bench_iet.py --json iet.json --markdown iet.md

CPU smoke (tiny, seconds)::

    uv run python packages/sr-models/benchmarks/bench_iet.py --device cpu --models iet-light \
        --scales 4 --sizes 64x32 --warmup 0 --iters 1 --no-scaling
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

PAPER_TABLE6_MS = {("iet", 2): 147.0, ("iet", 3): 106.0, ("iet", 4): 64.0}
PAPER_SOURCE = "IET Table 6 (RTX 5090; text: 256x256 output)"


def git_commit() -> str:
    """Short commit of the checkout the script lives in, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def device_name(device: torch.device) -> str:
    """Human-readable device description."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def parse_size(text: str) -> tuple[int, int]:
    """"WxH" -> (width, height) of the SR output."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1280x640, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


@torch.inference_mode()
def peak_memory_mb(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(peak MB of one call, peak minus the MB resident before it) on CUDA."""
    dev = x.device
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    model(x)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    return peak / 2**20, (peak - base) / 2**20


@torch.inference_mode()
def bench_one(
    name: str, scale: int, width: int, height: int, *, device: torch.device, warmup: int, iters: int
) -> dict[str, Any]:
    """Time one model at one scale and output size; returns a record (ms, MB, params, config)."""
    from sr_models import create_model

    if height % scale or width % scale:
        raise ValueError(f"output size {width}x{height} is not divisible by scale {scale}")
    model = create_model(name, scale=scale).to(device).eval()
    x = torch.rand(1, 3, height // scale, width // scale, device=device)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    model(x)
    if cuda:
        torch.cuda.synchronize(device)
    first_call_s = time.perf_counter() - t0
    for _ in range(warmup):
        model(x)
    peak = resident = None
    times: list[float] = []
    if cuda:
        peak, resident = peak_memory_mb(model, x)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
    paper = PAPER_TABLE6_MS.get((name, scale))
    record = {
        "model": name,
        "scale": scale,
        "output_size": [width, height],
        "lr_size": [width // scale, height // scale],
        "median_ms": statistics.median(times),
        "p10_ms": _quantile(times, 0.1),
        "p90_ms": _quantile(times, 0.9),
        "iters": iters,
        "warmup": warmup,
        "first_call_s": first_call_s,
        "peak_memory_mb": peak,
        "peak_minus_resident_mb": resident,
        "params": sum(p.numel() for p in model.parameters()),
        "paper_ms": paper,
        "paper_source": PAPER_SOURCE if paper is not None else None,
    }
    del model, x
    if cuda:
        torch.cuda.empty_cache()
    return record


def memory_scaling(name: str, scale: int, width: int, height: int, device: torch.device) -> dict[str, Any]:
    """Peak memory at ``width x height`` output and at twice the pixels (height doubled)."""
    from sr_models import create_model

    model = create_model(name, scale=scale).to(device).eval()
    peaks = []
    for h in (height, 2 * height):
        x = torch.rand(1, 3, h // scale, width // scale, device=device)
        model(x)  # warm the candidate cache and allocator
        peaks.append(peak_memory_mb(model, x)[1])
        del x
        torch.cuda.empty_cache()
    return {
        "model": name,
        "scale": scale,
        "output_sizes": [[width, height], [width, 2 * height]],
        "peak_minus_resident_mb": peaks,
        "ratio": peaks[1] / peaks[0],
        "target_ratio_max": 2.2,
    }


def to_markdown(meta: dict[str, Any], records: list[dict[str, Any]], scaling: list[dict[str, Any]]) -> str:
    """Markdown tables of the latency records and of the memory-scaling checks."""
    lines = [
        f"Device: {meta['device']}; torch {meta['torch']}; date {meta['date']}; commit {meta['commit']}; "
        f"warm-up {meta['warmup']}, {meta['iters']} timed runs (median, p10-p90), batch 1, fp32.",
        "",
        "| model | scale | output | median ms (p10-p90) | peak MB | peak - resident MB | paper ms | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        mem = "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        res = "n/a" if r["peak_minus_resident_mb"] is None else f"{r['peak_minus_resident_mb']:.0f}"
        lines.append(
            f"| {r['model']} | x{r['scale']} | {r['output_size'][0]}x{r['output_size'][1]} | "
            f"{r['median_ms']:.1f} ({r['p10_ms']:.1f}-{r['p90_ms']:.1f}) | {mem} | {res} | "
            f"{'' if r['paper_ms'] is None else r['paper_ms']} | {r['paper_source'] or ''} |"
        )
    if scaling:
        lines += [
            "",
            "| model | scale | outputs | peak - resident MB | ratio (target <= 2.2) |",
            "|---|---|---|---|---|",
        ]
        for s in scaling:
            sizes = " -> ".join(f"{w}x{h}" for w, h in s["output_sizes"])
            mb = " -> ".join(f"{m:.0f}" for m in s["peak_minus_resident_mb"])
            lines.append(f"| {s['model']} | x{s['scale']} | {sizes} | {mb} | {s['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["iet", "iet-light", "sst", "esc"],
                    help="registry names; sst/esc are skipped with a note if not registered")
    ap.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=[(1280, 640)],
                    help="SR output sizes WxH (add 256x256 for the paper's stated protocol)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-scaling", action="store_true", help="skip the memory-scaling checks")
    ap.add_argument("--json", type=Path, default=None, help="write all records here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    from sr_models import list_models

    known = set(list_models())
    meta = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "warmup": args.warmup,
        "iters": args.iters,
    }
    records: list[dict[str, Any]] = []
    for name in args.models:
        if name not in known:
            print(f"note: model {name!r} is not registered; skipped", file=sys.stderr)
            continue
        for scale in args.scales:
            for width, height in args.sizes:
                try:
                    rec = bench_one(name, scale, width, height, device=device, warmup=args.warmup,
                                    iters=args.iters)
                except torch.OutOfMemoryError:
                    print(f"note: {name} x{scale} {width}x{height}: out of memory", file=sys.stderr)
                    torch.cuda.empty_cache()
                    continue
                records.append(rec)
                print(json.dumps({k: rec[k] for k in ("model", "scale", "output_size", "median_ms",
                                                      "peak_memory_mb")}), flush=True)
    scaling: list[dict[str, Any]] = []
    if device.type == "cuda" and not args.no_scaling:
        for name in ("iet", "iet-light"):
            if name in args.models:
                scaling.append(memory_scaling(name, 2, 1280, 640, device))
        if "iet" in args.models:
            # one whole-image pass at a 1280 x 720 x2 output (target: within 24 GB)
            rec = bench_one("iet", 2, 1280, 720, device=device, warmup=0, iters=1)
            scaling.append({"model": "iet", "scale": 2, "output_sizes": [[1280, 720]],
                            "peak_minus_resident_mb": [rec["peak_memory_mb"]], "ratio": float("nan"),
                            "target_ratio_max": None, "note": "peak MB of one 1280x720 x2 pass"})
    table = to_markdown(meta, records, scaling)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "records": records, "scaling": scaling}, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
