"""Top ops of one CPU training step (torch profiler), per model, as Markdown tables.

The step is the trainer's (forward, L1, backward, the recipe's Muon/AdamW step, EMA update) on random
tensors, after one untimed warm-up step, with ``--threads`` torch threads (default 1, so that a
shared machine's load distorts the figures less). Each model runs in its own subprocess.

Usage:
  uv run python packages/sr-train/benchmarks/profile_cpu_step.py --models esc-light sst-light iet-light iet \\
      --batch 2 --patch 12 --top 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any


def worker(model: str, batch: int, patch: int, threads: int, top: int) -> dict[str, Any]:
    """Profile one step of ``model``; the ``top`` ops by self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    from _train_step import make_train_step

    step = make_train_step(model, batch, patch)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "sr_kernels::", "Optimizer"))
              or "Backward" in e.key]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / max(total, 1),
             "calls": e.count} for e in events[:top]]
    return {"model": model, "batch": batch, "patch": patch, "threads": threads, "step_s": wall, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["esc-light", "sst-light", "iet-light", "iet"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--patch", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.patch, args.threads, args.top)), flush=True)
        return 0
    for model in args.models:
        cmd = [sys.executable, __file__, "--worker", model, "--batch", str(args.batch), "--patch", str(args.patch),
               "--threads", str(args.threads), "--top", str(args.top)]
        load = os.getloadavg()[0]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
        if res.returncode or not lines:
            print(f"{model}: failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(lines[-1])
        print(f"\n{model}, batch {r['batch']} x {r['patch']}x{r['patch']}, {r['threads']} thread(s), profiled step "
              f"{r['step_s']:.2f} s, load average {load:.1f}\n")
        print("| op | self CPU ms | share | calls |\n|---|---|---|---|")
        for row in r["rows"]:
            print(f"| `{row['op']}` | {row['self_ms']:.0f} | {100 * row['share']:.0f}% | {row['calls']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
