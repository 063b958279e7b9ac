"""Benchmark gather_attention against the naive PyTorch gather and dense window attention (SDPA).

    uv run python packages/sr-kernels/benchmarks/bench_gather_attention.py            # CUDA, full shapes
    uv run python packages/sr-kernels/benchmarks/bench_gather_attention.py --device cpu --small   # smoke

For every shape (IET: B=1, H=6, N=320*160, D=40; IET-light: H=3, D=18) and K in {64, 144, 256} it times,
forward and forward+backward:

* ``sr_kernels``: ``gather_attention`` (Triton on CUDA; the torch reference on CPU unless
  ``SR_KERNELS_BACKEND``/``--backend`` says otherwise);
* ``naive``: index -> gathered K and V (B,H,N,K,D) -> einsum -> softmax -> einsum (what a PyTorch user
  writes; it materialises N x K x D);
* ``sdpa_window``: dense attention inside windows of exactly K tokens (N/K windows folded into the
  batch) through ``F.scaled_dot_product_attention`` restricted to flash/cuDNN on CUDA, head dim padded to
  a multiple of 8: the same number of keys per query with perfect locality, the practical ceiling.

Reported: median ms, achieved GB/s (bytes that must move at least once: q/out, one K and one V row per
slot, the index, lse; backward adds the gathered rows again, dO/dQ and fp32 dK/dV read-modify-writes),
peak memory above the inputs (MiB), and the speed-up targets of the issue (forward >= 10x naive and
within 2x of sdpa_window; forward+backward >= 5x naive). Writes JSON and a markdown table.
Index lists: ``--index local`` (sqrt(K) x sqrt(K) neighbourhoods, border-shifted; what DLSG's local part
and self-similar images give), ``random`` (uniform tokens, worst case for caches) or ``dlsg``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import sr_kernels
from sr_kernels.flops import gather_attention_bytes, gather_attention_flops


def make_index(kind: str, height: int, width: int, kk: int, heads: int, device, seed: int = 0) -> torch.Tensor:
    """(1, heads, N, kk) int32 index list."""
    n = height * width
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        idx = torch.randint(0, n, (1, heads, n, kk), generator=g)
    elif kind == "local":
        side = math.isqrt(kk)
        base = sr_kernels.dlsg_index(height, width, local=side, samples=1, dilation=1)[:, : side * side]
        if side * side < kk:  # pad non-square K with random tokens
            extra = torch.randint(0, n, (n, kk - side * side), generator=g)
            base = torch.cat([base, extra], dim=1)
        idx = base.expand(1, heads, n, kk)
    elif kind == "dlsg":
        samples = max(1, math.isqrt(max(kk - 64, 1)))
        base = sr_kernels.dlsg_index(height, width, local=8, samples=samples, dilation=3)
        base = torch.cat([base, base.new_full((n, max(0, kk - base.shape[1])), -1)], dim=1)[:, :kk]
        idx = base.expand(1, heads, n, kk)
    else:
        raise ValueError(f"--index must be local, random or dlsg, got {kind!r}")
    return idx.contiguous().to(device=device, dtype=torch.int32)


def naive_gather_attention(q, k, v, index, scale):
    b, h, n, d = q.shape
    kk = index.shape[-1]
    flat = index.clamp_min(0).long().expand(b, h, n, kk).reshape(b, h, n * kk, 1).expand(b, h, n * kk, d)
    kg = torch.gather(k, 2, flat).view(b, h, n, kk, d)
    vg = torch.gather(v, 2, flat).view(b, h, n, kk, d)
    s = torch.einsum("bhnd,bhnkd->bhnk", q, kg) * scale
    s = s.masked_fill(index < 0, float("-inf"))
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    return torch.einsum("bhnk,bhnkd->bhnd", p, vg)


def sdpa_window(q, k, v, kk):
    """Dense attention in windows of kk consecutive tokens (N padded up to a multiple of kk)."""
    b, h, n, d = q.shape
    nw = -(-n // kk)
    dp = -(-d // 8) * 8

    def fold(x):
        x = F.pad(x, (0, dp - d, 0, nw * kk - n))
        return x.view(b, h, nw, kk, dp).permute(0, 2, 1, 3, 4).reshape(b * nw, h, kk, dp)

    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            o = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), scale=d**-0.5)
    else:
        o = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), scale=d**-0.5)
    o = o.view(b, nw, h, kk, dp).permute(0, 2, 1, 3, 4).reshape(b, h, nw * kk, dp)
    return o[:, :, :n, :d]


def backward_bytes(b, h, n, kk, d, elem, index_heads):
    gathered = 2 * b * h * n * kk * d * elem  # K and V rows again
    atomics = 2 * b * h * n * kk * d * 4 * 2  # fp32 read + write of dK and dV per slot
    dense = 4 * b * h * n * d * elem  # q, dO, out read, dQ write
    return gathered + atomics + dense + b * index_heads * n * kk * 4


def timeit(fn, device, reps: int, warmup: int) -> float:
    """Median milliseconds."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mib(fn, device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_case(name, b, h, height, width, d, kk, args, device, dtype):
    n = height * width
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    index_heads = 1 if args.shared else h
    index = make_index(args.index, height, width, kk, index_heads, device)
    scale = d**-0.5
    elem = q.element_size()
    fwd_bytes = gather_attention_bytes(b, h, n, kk, d, elem_bytes=elem, index_bytes=4, index_heads=index_heads)
    bwd_bytes = backward_bytes(b, h, n, kk, d, elem, index_heads)

    def ours():
        return sr_kernels.gather_attention(q, k, v, index, scale=scale, backend=args.backend, check_index=False)

    impls = {
        "sr_kernels": ours,
        "naive": lambda: naive_gather_attention(q, k, v, index, scale),
        "sdpa_window": lambda: sdpa_window(q, k, v, kk),
    }
    rows = []
    for impl, fn in impls.items():
        entry = {"shape": name, "B": b, "H": h, "N": n, "D": d, "K": kk, "impl": impl, "dtype": str(dtype),
                 "index": args.index, "index_heads": index_heads}
        try:
            with torch.no_grad():
                entry["fwd_ms"] = timeit(fn, device, args.reps, args.warmup)
                entry["fwd_peak_mib"] = peak_mib(fn, device)
            leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

            def fwd_bwd(impl=impl, leaves=leaves):
                qq, kk_, vv = leaves
                if impl == "sr_kernels":
                    out = sr_kernels.gather_attention(qq, kk_, vv, index, scale=scale, backend=args.backend,
                                                      check_index=False)
                elif impl == "naive":
                    out = naive_gather_attention(qq, kk_, vv, index, scale)
                else:
                    out = sdpa_window(qq, kk_, vv, kk)
                out.backward(torch.ones_like(out))
                for t in leaves:
                    t.grad = None

            entry["fwdbwd_ms"] = timeit(fwd_bwd, device, args.reps, args.warmup)
            entry["fwdbwd_peak_mib"] = peak_mib(fwd_bwd, device)
            entry["fwd_GBps"] = fwd_bytes / entry["fwd_ms"] / 1e6
            entry["fwdbwd_GBps"] = (fwd_bytes + bwd_bytes) / entry["fwdbwd_ms"] / 1e6
            entry["fwd_TFLOPs"] = gather_attention_flops(b, h, n, kk, d) / entry["fwd_ms"] / 1e9
        except torch.cuda.OutOfMemoryError:
            entry["error"] = "out of memory"
            torch.cuda.empty_cache()
        except RuntimeError as exc:  # e.g. no flash kernel for this configuration
            entry["error"] = str(exc).splitlines()[0][:160]
        rows.append(entry)
        print(json.dumps(entry), flush=True)
    return rows


def summarise(rows):
    """Speed-ups of sr_kernels vs naive and vs the SDPA window ceiling, per (shape, K)."""
    out = []
    keys = sorted({(r["shape"], r["K"]) for r in rows}, key=lambda x: (x[0], x[1]))
    for shape, kk in keys:
        by = {r["impl"]: r for r in rows if r["shape"] == shape and r["K"] == kk and "error" not in r}
        if "sr_kernels" not in by:
            continue
        ours = by["sr_kernels"]
        s = {"shape": shape, "K": kk}
        if "naive" in by:
            s["fwd_speedup_vs_naive"] = by["naive"]["fwd_ms"] / ours["fwd_ms"]
            s["fwdbwd_speedup_vs_naive"] = by["naive"]["fwdbwd_ms"] / ours["fwdbwd_ms"]
        if "sdpa_window" in by:
            s["fwd_ratio_to_sdpa_window"] = ours["fwd_ms"] / by["sdpa_window"]["fwd_ms"]
            s["fwdbwd_ratio_to_sdpa_window"] = ours["fwdbwd_ms"] / by["sdpa_window"]["fwdbwd_ms"]
        s["targets_met"] = (s.get("fwd_speedup_vs_naive", 0) >= 10 and s.get("fwd_ratio_to_sdpa_window", 99) <= 2
                            and s.get("fwdbwd_speedup_vs_naive", 0) >= 5)
        out.append(s)
    return out


def markdown(rows, summary, meta) -> str:
    def f(x, fmt="{:.3f}"):
        return "–" if x is None else fmt.format(x)

    lines = [f"# gather_attention benchmark ({meta['device_name']}, {meta['dtype']}, index={meta['index']})", "",
             "| shape | K | impl | fwd ms | fwd GB/s | fwd peak MiB | fwd+bwd ms | fwd+bwd GB/s | fwd+bwd peak MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['K']} | {r['impl']} | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['shape']} | {r['K']} | {r['impl']} | {f(r['fwd_ms'])} | {f(r['fwd_GBps'], '{:.0f}')} | "
            f"{f(r['fwd_peak_mib'], '{:.0f}')} | {f(r['fwdbwd_ms'])} | {f(r['fwdbwd_GBps'], '{:.0f}')} | "
            f"{f(r['fwdbwd_peak_mib'], '{:.0f}')} |"
        )
    lines += ["", "| shape | K | fwd x naive (>=10) | fwd / sdpa_window (<=2) | fwd+bwd x naive (>=5) | "
              "fwd+bwd / sdpa_window | targets met |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['shape']} | {s['K']} | {f(s.get('fwd_speedup_vs_naive'), '{:.1f}')} | "
            f"{f(s.get('fwd_ratio_to_sdpa_window'), '{:.2f}')} | {f(s.get('fwdbwd_speedup_vs_naive'), '{:.1f}')} | "
            f"{f(s.get('fwdbwd_ratio_to_sdpa_window'), '{:.2f}')} | {s['targets_met']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--small", action="store_true", help="tiny shapes (smoke test, e.g. on CPU)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--index", default="local", choices=["local", "random", "dlsg"])
    parser.add_argument("--shared", action="store_true", help="one index list for all heads (Hi = 1)")
    parser.add_argument("--ks", default="64,144,256", help="comma-separated K values")
    parser.add_argument("--backend", default=None, choices=["triton", "torch"], help="force an sr_kernels backend")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available (use --device cpu --small)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if device.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # CPU einsum/SDPA in half precision is slow and not what we measure
    args.reps = args.reps or (3 if args.small else 20)
    args.warmup = args.warmup or (1 if args.small else 5)
    ks = [int(x) for x in args.ks.split(",")]
    if args.small:
        shapes = [("IET-small", 1, 2, 16, 12, 40), ("IET-light-small", 1, 3, 16, 12, 18)]
        ks = [k for k in ks if k <= 64] or [16]
    else:
        shapes = [("IET", 1, 6, 320, 160, 40), ("IET-light", 1, 3, 320, 160, 18)]

    rows = []
    for name, b, h, height, width, d in shapes:
        for kk in ks:
            rows.extend(run_case(name, b, h, height, width, d, kk, args, device, dtype))
    summary = summarise(rows)
    meta = {
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(dtype), "index": args.index, "shared_index": args.shared,
        "small": args.small, "reps": args.reps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"gather_attention_{args.device}{'_small' if args.small else ''}_{args.index}"
    (args.out / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2))
    (args.out / f"{tag}.md").write_text(markdown(rows, summary, meta))
    print(markdown(rows, summary, meta))
    print(f"wrote {args.out / tag}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
