"""Latency and peak-memory benchmark of ESC / SST inference next to the papers' figures.

Measures ``model(x)`` for an LR input whose SR output is ``--width x --height`` (1280x720 by default),
after ``--warmup`` untimed calls (they also absorb the FlexAttention / torch.compile compilation),
over ``--iters`` calls timed one by one with CUDA events; reports the median (and p10/p90) and the peak
of ``torch.cuda.max_memory_allocated`` during one call (the papers' memory metric). On CPU it uses
``time.perf_counter`` and reports no memory (a smoke test of the script).

Paper figures shown next to ours:

* ESC, Table 2 (RTX 4090, FP32, HD output, 100 runs): ESC / ESC-light / ESC-FP at x2/x3/x4.
* SST, Table S4, H200 column (HD output assumed, as in ESC): SST, SST+, SST-L, SST-L+ at x2/x3/x4.
  In the extracted table text the "+" marks are lost; rows are read as SST, SST+, SST-L, SST-L+ in
  that order (the x2 SST+ row, 455.8 ms / 2825 MB, equals the FA3 row of Table S3).

Usage (GPU)::

    uv run python packages/sr-models/benchmarks/bench_esc_sst.py --json bench.json --markdown bench.md

CPU smoke::

    uv run python packages/sr-models/benchmarks/bench_esc_sst.py --device cpu --models esc-light \
        --scales 4 --width 128 --height 64 --warmup 1 --iters 2
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

# (latency ms, memory MB) from the papers
ESC_TABLE2_RTX4090: dict[tuple[str, int], tuple[float, float]] = {
    ("esc", 2): (120.9, 831), ("esc", 3): (41.4, 385), ("esc", 4): (21.9, 215),
    ("esc-light", 2): (73.2, 830), ("esc-light", 3): (25.2, 384), ("esc-light", 4): (13.3, 213),
    ("esc-fp", 2): (94.3, 627), ("esc-fp", 3): (34.8, 291), ("esc-fp", 4): (21.7, 158),
}
SST_TABLE_S4_H200: dict[tuple[str, int], tuple[float, float]] = {
    ("sst", 2): (428.9, 2675), ("sst-plus", 2): (455.8, 2825),
    ("sst-l", 2): (608.4, 2824), ("sst-l-plus", 2): (644.9, 2990),
    ("sst", 3): (194.2, 1296), ("sst-plus", 3): (207.1, 1527),
    ("sst-l", 3): (276.3, 1391), ("sst-l-plus", 3): (293.4, 1639),
    ("sst", 4): (111.5, 764), ("sst-plus", 4): (120.8, 914),
    ("sst-l", 4): (158.3, 941), ("sst-l-plus", 4): (170.4, 1015),
}


def paper_reference(name: str, scale: int) -> dict[str, Any] | None:
    """The paper's (latency, memory) for ``name`` at ``scale`` with its source, or None."""
    if (name, scale) in ESC_TABLE2_RTX4090:
        lat, mem = ESC_TABLE2_RTX4090[(name, scale)]
        return {"latency_ms": lat, "memory_mb": mem, "source": "ESC Table 2 (RTX 4090, FP32)"}
    if (name, scale) in SST_TABLE_S4_H200:
        lat, mem = SST_TABLE_S4_H200[(name, scale)]
        return {"latency_ms": lat, "memory_mb": mem, "source": "SST Table S4 (H200)"}
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=False, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


@torch.inference_mode()
def bench_one(
    name: str, scale: int, *, device: torch.device, height: int, width: int, warmup: int, iters: int,
    batch: int, autocast: str | None, compile_model: bool, overrides: dict[str, Any],
) -> dict[str, Any]:
    """Time one model/scale; returns a record with median/p10/p90 latency (ms) and peak memory (MB)."""
    from sr_models import create_model

    if height % scale or width % scale:
        raise ValueError(f"output size {width}x{height} is not divisible by scale {scale}")
    model = create_model(name, scale=scale, **overrides).to(device).eval()
    fwd = torch.compile(model) if compile_model else model
    x = torch.rand(batch, 3, height // scale, width // scale, device=device)
    amp_dtype = torch.bfloat16 if autocast == "bf16" else torch.float16

    def run() -> torch.Tensor:
        if autocast is None:
            return fwd(x)
        with torch.autocast(device.type, dtype=amp_dtype):
            return fwd(x)

    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize(device)
    first_call_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        run()
    times: list[float] = []
    peak_mb = None
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_mb = torch.cuda.memory_allocated(device) / 2**20
        run()
        torch.cuda.synchronize(device)
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        base_mb = None
        for _ in range(iters):
            t = time.perf_counter()
            run()
            times.append((time.perf_counter() - t) * 1e3)
    record: dict[str, Any] = {
        "model": name, "scale": scale, "lr_size": [height // scale, width // scale],
        "output_size": [height, width], "batch": batch,
        "median_ms": statistics.median(times), "p10_ms": _quantile(times, 0.1), "p90_ms": _quantile(times, 0.9),
        "iters": iters, "warmup": warmup, "first_call_s": first_call_s,
        "peak_memory_mb": peak_mb,
        "peak_minus_resident_mb": None if peak_mb is None or base_mb is None else peak_mb - base_mb,
        "params": sum(p.numel() for p in model.parameters()),
        "config": model.config, "autocast": autocast, "compiled": compile_model,
        # the papers measured one 1280x720 output: compare only at that setting
        "paper": paper_reference(name, scale) if (height, width, batch) == (720, 1280, 1) else None,
    }
    return record


def to_markdown(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """A markdown table of the records with the papers' figures and our/paper ratios."""
    lines = [
        f"Device: {meta['device']}; torch {meta['torch']}; date {meta['date']}; commit {meta['commit']}; "
        f"output {meta['width']}x{meta['height']}, batch {meta['batch']}, warm-up {meta['warmup']}, "
        f"{meta['iters']} timed runs (median).",
        "",
        "| model | scale | LR | ours median ms (p10-p90) | ours peak MB | paper ms | paper MB | ms ratio | MB ratio | paper source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        p = r["paper"] or {}
        mem = "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        ratio_ms = f"{r['median_ms'] / p['latency_ms']:.2f}" if p else ""
        ratio_mb = (f"{r['peak_memory_mb'] / p['memory_mb']:.2f}"
                    if p and r["peak_memory_mb"] is not None else "")
        lines.append(
            f"| {r['model']} | x{r['scale']} | {r['lr_size'][1]}x{r['lr_size'][0]} | "
            f"{r['median_ms']:.1f} ({r['p10_ms']:.1f}-{r['p90_ms']:.1f}) | {mem} | "
            f"{p.get('latency_ms', '')} | {p.get('memory_mb', '')} | {ratio_ms} | {ratio_mb} | {p.get('source', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["esc", "esc-light", "sst", "sst-l"])
    ap.add_argument("--scales", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--height", type=int, default=720, help="SR output height")
    ap.add_argument("--width", type=int, default=1280, help="SR output width")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--autocast", choices=["bf16", "fp16"], default=None, help="autocast the whole model")
    ap.add_argument("--compile", action="store_true", help="torch.compile the whole model")
    ap.add_argument("--attn-backend", default=None, help="override the models' attn_backend")
    ap.add_argument("--attn-precision", default=None, choices=["bf16", "fp32"], help="SST/ESC-RIB core")
    ap.add_argument("--json", type=Path, default=None, help="write all records here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the table here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    meta = {
        "device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
        "height": args.height, "width": args.width, "batch": args.batch, "warmup": args.warmup,
        "iters": args.iters,
    }
    try:
        import flash_attn_interface  # type: ignore[import-not-found]  # noqa: F401

        meta["fa3"] = True
    except ImportError:
        meta["fa3"] = False
    records = []
    for name in args.models:
        for scale in args.scales:
            overrides: dict[str, Any] = {}
            if args.attn_backend:
                overrides["attn_backend"] = args.attn_backend
            if args.attn_precision and name.startswith(("sst", "esc-rib")):
                overrides["attn_precision"] = args.attn_precision
            try:
                rec = bench_one(name, scale, device=device, height=args.height, width=args.width,
                                warmup=args.warmup, iters=args.iters, batch=args.batch,
                                autocast=args.autocast, compile_model=args.compile, overrides=overrides)
            except (ValueError, RuntimeError) as exc:  # e.g. OOM or an unsupported scale
                print(f"{name} x{scale}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                      file=sys.stderr)
                continue
            records.append(rec)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            mem = "" if rec["peak_memory_mb"] is None else f", peak {rec['peak_memory_mb']:.0f} MB"
            print(f"{name} x{scale}: median {rec['median_ms']:.2f} ms{mem}", flush=True)
    table = to_markdown(meta, records)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "records": records}, indent=2))
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
