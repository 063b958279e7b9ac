"""Peak memory of FGCA's attention vs a BRA-style routing attention at equal k and window (not a test).

    uv run python packages/sr-kernels/benchmarks/bench_fgca_vs_bra_memory.py [--device cpu|cuda] [--quick]

SSCAN's Figure 4 compares the memory of BiFormer's bi-level routing attention (BRA) with FGCA "during
calculating attention score". Both here use the same selection (sr_kernels.window_topk_select: mean-pooled
window q against mean-pooled window k, summed over heads, top-k) and the same gather of the k key/value
windows into a dense (query windows, k * window tokens) block per head, so the only difference is how
the attention over that block is computed:

* ``fgca``: ``sr_kernels.window_topk_attention(impl="sdpa")`` - torch SDPA (FlashAttention /
  memory-efficient kernels on CUDA, the tiled flash kernel on CPU), the logits never hit memory;
* ``bra``: ``impl="math"`` - BiFormer's way (its ``KVGather`` + ``q @ k`` + softmax + ``@ v``): the
  (query windows, T, k*T) logits and their softmax are materialised per head.

What is measured: the peak memory the attention call adds on top of its inputs (q, k, v windows and the
window ids, allocated before), for inference (``no_grad`` forward) and training (forward + backward with
q, k, v requiring grad). Every (shape, method, mode) runs in a fresh subprocess:

* CPU: peak resident set size (``getrusage`` ru_maxrss) after the call minus the current RSS
  (``/proc/self/statm``) before it; inputs are filled in place, so setup leaves no higher transient;
  a few MB of noise (allocator, thread pools);
* CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated bytes before the call (warm-up run
  first, the peak counter reset after it).

Shapes (defaults): the SSCAN-light attention (3 heads x 20 channels, 8x8 windows, top-8: 512 keys per
query) and the SSCAN one (6 x 30, 16x16 windows, top-4: 1024 keys) on square LR feature maps. Writes
JSON and a markdown table (ratio bra / fgca per row) to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

CONFIGS = {
    # name: (heads, head_dim, window, topk)
    "sscan-light": (3, 20, 8, 8),
    "sscan": (6, 30, 16, 4),
}
DEFAULT_SIDES = {"sscan-light": (64, 128, 256), "sscan": (64, 128, 192)}
QUICK_SIDES = {"sscan-light": (32, 64), "sscan": (32, 64)}


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(config: str, side: int, method: str, mode: str, device: str) -> dict:
    """One measurement in this process (run through a fresh subprocess by ``main``)."""
    import torch

    import sr_kernels

    torch.manual_seed(0)
    heads, d, ws, topk = CONFIGS[config]
    nw, t = (side // ws) ** 2, ws * ws
    dev = torch.device(device)
    grad = mode == "training"
    q, k, v = (torch.empty(1, heads, nw, t, d, device=dev).normal_() for _ in range(3))
    ids = sr_kernels.window_topk_select(q, k, min(topk, nw))
    if grad:
        for x in (q, k, v):
            x.requires_grad_()
    impl = "sdpa" if method == "fgca" else "math"

    def run() -> None:
        with torch.set_grad_enabled(grad):
            out = sr_kernels.window_topk_attention(q, k, v, ids, impl=impl, check_ids=False)
            if grad:
                out.sum().backward()
        del out

    if dev.type == "cuda":
        run()  # warm-up: kernels loaded, workspaces allocated
        for x in (q, k, v):
            x.grad = None
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
    else:
        before_now, before_peak = _current_rss_bytes(), _peak_rss_bytes()
        run()
        after_peak = _peak_rss_bytes()
        extra = after_peak - before_now
        if after_peak <= before_peak:  # the call never exceeded setup's high-water mark
            extra = -1
    keys = min(topk, nw) * t
    return {
        "config": config, "side": side, "tokens": side * side, "method": method, "mode": mode, "device": device,
        "heads": heads, "head_dim": d, "window": ws, "topk": min(topk, nw), "keys_per_query": keys,
        "peak_extra_mb": extra / 2**20 if extra >= 0 else None,
        "gathered_kv_mb": 2 * heads * side * side * keys // t * d * 4 / 2**20,
        "logits_mb": heads * side * side * keys * 4 / 2**20,
    }


def _run_child(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_same_output(device: str) -> float:
    """Both methods compute the same attention (max abs difference on a small case)."""
    import torch

    import sr_kernels

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 3, 16, 64, 20, device=device) for _ in range(3))
    ids = sr_kernels.window_topk_select(q, k, 4)
    a = sr_kernels.window_topk_attention(q, k, v, ids, impl="sdpa")
    b = sr_kernels.window_topk_attention(q, k, v, ids, impl="math")
    return float((a - b).abs().max())


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def ratio_text(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except Exception:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small sides only (smoke run)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--modes", nargs="+", default=["inference", "training"], choices=["inference", "training"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", nargs=5, metavar=("CONFIG", "SIDE", "METHOD", "MODE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config, side, method, mode, device = args.child
        print(json.dumps(measure(config, int(side), method, mode, device)))
        return
    diff = _check_same_output(args.device)
    if diff > 1e-4:
        raise SystemExit(f"fgca and bra outputs differ by {diff}; the comparison would be meaningless")
    sides = QUICK_SIDES if args.quick else DEFAULT_SIDES
    rows = []
    for config in args.configs:
        for side in sides[config]:
            for mode in args.modes:
                res = {m: _run_child([config, str(side), m, mode, args.device]) for m in ("fgca", "bra")}
                f, b = res["fgca"]["peak_extra_mb"], res["bra"]["peak_extra_mb"]
                ratio = b / f if f and b else None
                rows.append({**res["fgca"], "fgca_mb": f, "bra_mb": b, "ratio_bra_over_fgca": ratio})
                print(f"{config:12s} {side:4d}^2 {mode:9s} fgca {f if f is not None else float('nan'):9.1f} MB  "
                      f"bra {b if b is not None else float('nan'):9.1f} MB  ratio {ratio or float('nan'):5.2f}", flush=True)
    meta = {
        "date": datetime.date.today().isoformat(), "commit": _git_commit(), "device": args.device,
        "machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv),
        "max_abs_diff_fgca_vs_bra": diff,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"fgca_vs_bra_memory_{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "| attention shape | LR side | tokens | mode | keys/query | gathered K+V MB | BRA logits MB | FGCA peak MB | BRA peak MB | BRA / FGCA |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} ({r['heads']}x{r['head_dim']}, w{r['window']}, top-{r['topk']}) | {r['side']} | {r['tokens']} | "
            f"{r['mode']} | {r['keys_per_query']} | {r['gathered_kv_mb']:.1f} | {r['logits_mb']:.1f} | {fmt(r['fgca_mb'])} | "
            f"{fmt(r['bra_mb'])} | {ratio_text(r['ratio_bra_over_fgca'])} |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    main()
