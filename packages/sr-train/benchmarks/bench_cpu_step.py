"""CPU training-step time and peak RSS of esc-light, sst-light, iet-light and iet, before/after in one run.

One step is the trainer's: forward, L1 loss, backward, the recipe's Muon/AdamW step, EMA update, on
random tensors (no data loading). Every (model, size, source tree) measurement runs in its OWN
subprocess, so the peak RSS (``VmHWM`` of /proc/self/status) is that of one model alone; the
process also reports its RSS after the model, optimizer and EMA were built, so ``peak - built`` is
what the step itself adds. Each measurement runs ``--warmup`` untimed steps, then ``--steps`` timed
ones; the median is reported.

``--baseline-src DIR`` (a checkout's ``packages`` folder, e.g. ``git worktree add /work/wt/base da6d399``
then ``--baseline-src /work/wt/base/packages``) runs the SAME measurement with ``PYTHONPATH`` set to
that tree's ``*/src`` folders, interleaved with the current tree (baseline and current alternate,
in swapped order every round), so that the before/after ratios come from the same conditions.

Sizes: ``quick`` is the quick preset's (batch 2 of 12x12 LR patches), ``b8p32`` is batch 8 of 32x32.
Threads default to 1 (``--threads``) so that figures on a shared machine are comparable (the load
average is recorded with every measurement).

Usage:
  uv run python packages/sr-train/benchmarks/bench_cpu_step.py --baseline-src /work/wt/base/packages \\
      --out bench_cpu_step.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, tuple[int, int]] = {"quick": (2, 12), "b8p32": (8, 32)}
MODELS = ("esc-light", "sst-light", "iet-light", "iet")


def _status_mb(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(model: str, batch: int, patch: int, warmup: int, steps: int, threads: int) -> dict[str, Any]:
    """Build ``model`` with its quick preset's optimizer and time ``steps`` training steps (run in a subprocess)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from _train_step import make_train_step

    import sr_layers

    step = make_train_step(model, batch, patch)
    built = _status_mb("VmRSS")

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "step_s_all": times, "rss_built_mb": built,
            "rss_peak_mb": _status_mb("VmHWM"), "threads": torch.get_num_threads(),
            "sr_layers": str(Path(sr_layers.__file__).resolve().parents[1])}


def _src_path(packages: Path) -> str:
    return os.pathsep.join(str(p) for p in sorted(packages.glob("*/src")))


def _measure(tree: str, src: str | None, model: str, size: str, args: argparse.Namespace) -> dict[str, Any]:
    batch, patch = SIZES[size]
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, __file__, "--worker", model, str(batch), str(patch), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--threads", str(args.threads)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    row: dict[str, Any] = {"tree": tree, "model": model, "size": size, "batch": batch, "patch": patch,
                           "load_before": round(load, 2), "wall_s": round(time.perf_counter() - t0, 1)}
    lines = [x for x in res.stdout.splitlines() if x.startswith("{")]
    if res.returncode != 0 or not lines:
        row["error"] = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1][:200]
    else:
        row.update(json.loads(lines[-1]))
    row["load_after"] = round(os.getloadavg()[0], 2)
    return row


def _commit(path: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, size): median step time and max peak RSS of each tree, and new/baseline ratios."""
    out = []
    keys = sorted({(r["model"], r["size"]) for r in rows}, key=lambda k: (MODELS.index(k[0]) if k[0] in MODELS else 99, k[1]))
    for model, size in keys:
        entry: dict[str, Any] = {"model": model, "size": size}
        for tree in ("baseline", "current"):
            ok = [r for r in rows if r["model"] == model and r["size"] == size and r["tree"] == tree and "error" not in r]
            bad = [r for r in rows if r["model"] == model and r["size"] == size and r["tree"] == tree and "error" in r]
            if ok:
                entry[tree] = {"step_s": statistics.median(r["step_s"] for r in ok),
                               "rss_peak_mb": max(r["rss_peak_mb"] for r in ok),
                               "rss_step_mb": max(r["rss_peak_mb"] - r["rss_built_mb"] for r in ok), "runs": len(ok)}
            elif bad:
                entry[tree] = {"error": bad[0]["error"]}
        b, c = entry.get("baseline", {}), entry.get("current", {})
        if "step_s" in b and "step_s" in c:
            entry["time_ratio"] = c["step_s"] / b["step_s"]
            entry["rss_peak_ratio"] = c["rss_peak_mb"] / b["rss_peak_mb"]
            entry["rss_step_ratio"] = c["rss_step_mb"] / max(b["rss_step_mb"], 1e-9)
        out.append(entry)
    return out


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The summary as a Markdown table (step time s, peak RSS MiB, step-added RSS MiB, ratios)."""
    lines = [f"CPU training step, {meta['machine']}, {meta['date']}, current {meta['commit']} vs baseline "
             f"{meta.get('baseline_commit', '-')}, torch {meta['torch']}, {meta['threads']} thread(s), "
             f"{meta['steps']} timed steps x {meta['rounds']} rounds, load average {meta['load_min']}-{meta['load_max']}",
             "", "| model | batch x LR patch | step s (before -> after) | ratio | peak RSS MiB (before -> after) | "
             "ratio | step-added RSS MiB (before -> after) | ratio |", "|---|---|---|---|---|---|---|---|"]
    def pair(b: dict[str, Any], c: dict[str, Any], key: str, fmt: str) -> str:
        return " -> ".join(format(d[key], fmt) if key in d else d.get("error", "-") for d in (b, c))

    def ratio(e: dict[str, Any], key: str) -> str:
        return f"{e[key]:.2f}" if key in e else "-"

    for e in summary:
        b, c = e.get("baseline", {}), e.get("current", {})
        batch, patch = SIZES[e["size"]]
        lines.append(f"| {e['model']} | {batch} x {patch}x{patch} | {pair(b, c, 'step_s', '.2f')} | "
                     f"{ratio(e, 'time_ratio')} | {pair(b, c, 'rss_peak_mb', '.0f')} | {ratio(e, 'rss_peak_ratio')} | "
                     f"{pair(b, c, 'rss_step_mb', '.0f')} | {ratio(e, 'rss_step_ratio')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=list(SIZES))
    p.add_argument("--baseline-src", type=Path, help="a checkout's packages/ folder to measure as the baseline")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per measurement (0: torch's default)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement subprocess")
    p.add_argument("--out", type=Path, help="write the JSON results here (and a .md table beside it)")
    p.add_argument("--worker", nargs=3, metavar=("MODEL", "BATCH", "PATCH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        model, batch, patch = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(model, batch, patch, args.warmup, args.steps, args.threads)), flush=True)
        return 0
    import torch

    trees: list[tuple[str, str | None]] = [("current", None)]
    if args.baseline_src is not None:
        if not args.baseline_src.is_dir() or not list(args.baseline_src.glob("*/src")):
            print(f"bench_cpu_step: --baseline-src {args.baseline_src}: no */src folders there", file=sys.stderr)
            return 2
        trees.append(("baseline", _src_path(args.baseline_src.resolve())))
    rows = []
    for r in range(args.rounds):
        for model in args.models:
            for size in args.sizes:
                for tree, src in trees if r % 2 == 0 else trees[::-1]:
                    row = _measure(tree, src, model, size, args)
                    row["round"] = r
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    here = Path(__file__).resolve().parents[3]
    loads = [x for r in rows for x in (r["load_before"], r["load_after"])]
    meta = {"machine": f"{os.cpu_count()}-CPU {platform.processor() or platform.machine()}",
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"), "commit": _commit(here),
            "torch": torch.__version__, "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
            "load_min": min(loads), "load_max": max(loads), "command": " ".join(sys.argv)}
    if args.baseline_src is not None:
        meta["baseline_commit"] = _commit(args.baseline_src)
    summary = summarise(rows)
    table = markdown(summary, meta)
    print(table)
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
