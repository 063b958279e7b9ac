"""IEA layer attention: fused ``iea_attention`` vs the unfused composition vs dense SDPA (not a test).

    # GPU (CUDA events, bf16): IET x2 and x4 at a 1280 x 640 output
    uv run python packages/sr-kernels/benchmarks/bench_iea_layer.py --device cuda --out bench_iea_gpu
    # CPU: the torch path of the fused op against the composition, at IET's CPU test shape (fp32)
    uv run python packages/sr-kernels/benchmarks/bench_iea_layer.py --device cpu --sizes cpu --out bench_iea_cpu
    # smoke run (tiny, CPU)
    uv run python packages/sr-kernels/benchmarks/bench_iea_layer.py --device cpu --sizes tiny --repeats 2

Per size and layer shape (K candidates, keep kept, AV over the kept ones or all K) it times, forward and
forward + backward (loss on out and on the kept log-probabilities, so the prior chain is differentiated):

* ``fused``: ``sr_kernels.iea_attention`` (Triton on CUDA, the torch path on CPU);
* ``fused+union``: the same with a tile-union plan (tensor-core path), for the DLSG layer (K = 208);
* ``unfused``: what ``sr_layers.IEAttention`` ran before: gather_scores -> log_softmax -> exp ->
  gather_values, topk_select (and gather_values over the kept list with av_on_selected);
* ``sdpa``: ``F.scaled_dot_product_attention`` over non-overlapping windows of exactly K tokens (dense
  attention with the same number of keys per query; flash / cuDNN backends on GPU).

Inputs: B = 1, H = 6, D = 40 (IET), a (B, H, N, K) fp32 prior with requires_grad (the progressive prior);
index lists are per head, K tokens drawn without replacement from a 32 x 32 neighbourhood of the query
(IET's lists are spatially local), except the DLSG layer (the real DLSG list, shared by the heads).
Timing: warm-up, then the median of ``--repeats`` runs (CUDA events on GPU, perf_counter on CPU); peak
memory (``torch.cuda.max_memory_allocated`` above the inputs) on GPU. Ratios are against ``unfused``
and ``sdpa`` of the same run. Writes ``<out>.json`` and ``<out>.md`` (atomically) when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import sr_kernels

SIZES = {
    # name: (LR height, LR width)
    "x2-1280x640": (320, 640),
    "x4-1280x640": (160, 320),
    "cpu": (24, 24),
    "tiny": (12, 16),
}
SIZE_SETS = {"gpu": ("x4-1280x640", "x2-1280x640"), "cpu": ("cpu",), "tiny": ("tiny",)}
# (label, K, keep, av_on_selected): the DLSG layer, a wide and a mid block-2 layer, a late layer, the last
LAYERS = [
    ("dlsg K=208 keep=160 sel", 208, 160, True),
    ("K=256 keep=192 sel", 256, 192, True),
    ("K=144 keep=96 sel", 144, 96, True),
    ("K=64 keep=48 sel", 64, 48, True),
    ("last K=16 keep=2 all-K", 16, 2, False),
]


def local_index(height: int, width: int, heads: int, kk: int, *, radius: int = 16, seed: int = 0) -> torch.Tensor:
    """(1, H, N, K) int32: per head, K distinct tokens from the (2r x 2r) neighbourhood of each query."""
    g = torch.Generator().manual_seed(seed)
    side = min(2 * radius, height, width)
    n = height * width
    if side * side < kk:
        raise ValueError(f"a {height}x{width} image has no {kk}-token neighbourhood")
    ys = torch.arange(height).repeat_interleave(width)
    xs = torch.arange(width).repeat(height)
    y0 = (ys - side // 2).clamp(0, height - side)
    x0 = (xs - side // 2).clamp(0, width - side)
    out = torch.empty(heads, n, kk, dtype=torch.int32)
    for h in range(heads):
        pick = torch.rand(n, side * side, generator=g).argsort(dim=1)[:, :kk]
        out[h] = ((y0[:, None] + pick // side) * width + x0[:, None] + pick % side).int()
    return out[None]


def unfused(q, k, v, index, prior, keep, on_selected, bias=None):
    """The composition IEAttention ran (public ops, default backend)."""
    add = prior if bias is None else bias + prior
    scores = sr_kernels.gather_scores(q, k, index, bias=add, check_index=False)
    logp = torch.log_softmax(scores, dim=-1)
    del scores
    if not on_selected:
        out = sr_kernels.gather_values(logp.exp(), v, index, check_index=False)
    kept_logp, kept_idx = sr_kernels.topk_select(logp, index, keep, check_index=False)
    if on_selected:
        out = sr_kernels.gather_values(kept_logp.exp(), v, kept_idx, check_index=False)
    return out, kept_logp


def fused(q, k, v, index, prior, keep, on_selected, bias=None, plan=None):
    r = sr_kernels.iea_attention(q, k, v, index, keep=keep, prior=prior, bias=bias, av_on_selected=on_selected,
                                 tile_union=plan, check_index=False)
    return r.out, r.kept_logp


def windowed_sdpa(q, k, v, kk):
    """Dense attention over non-overlapping windows of kk consecutive tokens (padded to a multiple)."""
    b, h, n, d = q.shape
    pad = (-n) % kk
    qkv = [F.pad(t, (0, 0, 0, pad)) if pad else t for t in (q, k, v)]
    w = (n + pad) // kk
    qw, kw, vw = (t.view(b, h, w, kk, d).transpose(1, 2).reshape(b * w, h, kk, d) for t in qkv)
    out = F.scaled_dot_product_attention(qw, kw, vw)
    return out.view(b, w, h, kk, d).transpose(1, 2).reshape(b, h, n + pad, d)[:, :, :n], None


def _timer(device: str, repeats: int, fn: Callable[[], None]) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def _peak_mb(device: str, fn: Callable[[], None]) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _bench_layer(device, repeats, q, k, v, index, prior, bias, plan, keep, on_sel, kk):
    """Yields (impl, mode, ms, peak MB, error) for every implementation, forward and forward + backward."""
    leaves = [t.requires_grad_() for t in (q, k, v, prior)] + ([bias.requires_grad_()] if bias is not None else [])

    def step(fn, grad: bool):
        def call():
            with torch.set_grad_enabled(grad):
                out, klp = fn()
                if grad:
                    loss = out.float().sum()
                    if klp is not None:
                        loss = loss + klp.masked_fill(torch.isinf(klp), 0).sum()
                    loss.backward()
                    for t in leaves:
                        t.grad = None
        return call

    impls = {
        "fused": lambda: fused(q, k, v, index, prior, keep, on_sel, bias),
        "unfused": lambda: unfused(q, k, v, index, prior, keep, on_sel, bias),
        "sdpa": lambda: windowed_sdpa(q, k, v, kk),
    }
    if plan is not None:
        impls["fused+union"] = lambda: fused(q, k, v, index, prior, keep, on_sel, bias, plan)
    for name, fn in impls.items():
        for mode, grad in (("fwd", False), ("fwd+bwd", True)):
            try:
                ms = _timer(device, repeats, step(fn, grad))
                mb = _peak_mb(device, step(fn, grad))
                err = ""
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory: recorded, not fatal
                ms, mb, err = None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                if device == "cuda":
                    torch.cuda.empty_cache()
            yield name, mode, ms, mb, err


def run(device: str, sizes: tuple[str, ...], repeats: int, dtype: torch.dtype) -> list[dict]:
    rows = []
    heads, d = 6, 40
    for size in sizes:
        height, width = SIZES[size]
        n = height * width
        for label, kk, keep, on_sel in LAYERS:
            if kk > n and not label.startswith("dlsg"):
                continue
            g = torch.Generator().manual_seed(1)
            q, k, v = (torch.randn(1, heads, n, d, generator=g).to(device, dtype) for _ in range(3))
            plan, bias = None, None
            if label.startswith("dlsg"):
                samples = 12 if min(height, width) >= 24 else max(1, min(height, width) // 4)
                dl = sr_kernels.dlsg_index(height, width, local=8, samples=samples, dilation=2)
                kk = dl.shape[1]
                index = dl.view(1, 1, n, kk).to(device=device, dtype=torch.int32)
                bias = (torch.randn(1, heads, n, kk, generator=g) * 0.02).to(device)  # the slot-indexed RPB
                if device == "cuda":
                    plan = sr_kernels.iea_tile_union(index, image_size=(height, width))
            else:
                index = local_index(height, width, heads, kk).to(device)
            prior = torch.randn(1, heads, n, kk, generator=g).to(device).log_softmax(-1)
            for name, mode, ms, mb, err in _bench_layer(device, repeats, q, k, v, index, prior, bias, plan,
                                                        keep, on_sel, kk):
                rows.append(dict(size=size, n=n, layer=label, k=kk, keep=keep, impl=name, mode=mode,
                                 ms=ms, peak_mb=mb, error=err))
                print(f"{size:12s} {label:26s} {name:12s} {mode:8s} "
                      + (f"{ms:9.3f} ms" if ms is not None else err), flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| size | layer | mode | fused ms | unfused ms | sdpa ms | fused+union ms | unfused / fused | "
              "sdpa / fused | fused peak MB | unfused peak MB |", "|" + "---|" * 11]
    key = {}
    for r in rows:
        key[(r["size"], r["layer"], r["mode"], r["impl"])] = r
    seen = []
    for r in rows:
        t = (r["size"], r["layer"], r["mode"])
        if t not in seen:
            seen.append(t)

    def ms(t, impl):
        r = key.get((*t, impl))
        return None if r is None else r["ms"]

    def mb(t, impl):
        r = key.get((*t, impl))
        return None if r is None or r["peak_mb"] is None else f"{r['peak_mb']:.0f}"

    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    for t in seen:
        f, u, s, fu = ms(t, "fused"), ms(t, "unfused"), ms(t, "sdpa"), ms(t, "fused+union")
        ru = f"{u / f:.2f}" if f and u else "-"
        rs = f"{s / f:.2f}" if f and s else "-"
        lines.append(f"| {t[0]} | {t[1]} | {t[2]} | {fmt(f)} | {fmt(u)} | {fmt(s)} | {fmt(fu)} | {ru} | {rs} | "
                     f"{mb(t, 'fused') or '-'} | {mb(t, 'unfused') or '-'} |")
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", choices=tuple(SIZE_SETS), default=None,
                        help="gpu (x4 and x2 at 1280x640), cpu (24x24 LR) or tiny; default: gpu on CUDA, cpu else")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is present", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SIZE_SETS[args.sizes or ("gpu" if args.device == "cuda" else "cpu")]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    rows = run(args.device, sizes, args.repeats, dtype)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"), "commit": commit or "unknown", "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""), "repeats": args.repeats,
        "command": "python " + " ".join(sys.argv),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if args.out:
        _write(args.out + ".json", json.dumps({"meta": meta, "rows": rows}, indent=1))
        _write(args.out + ".md", markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
