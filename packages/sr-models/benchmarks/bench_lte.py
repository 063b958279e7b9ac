"""Render time and peak memory of the LTE upsampler of esc-lte, per scale and query chunk.

For each ``--scales`` value and ``--chunks`` value, renders an ``--size`` x ``--size`` LR feature map
with the LTE head (``sr_layers.lte.LTE`` at the paper's widths: hidden 256, MLP 256-256-256, on 64
input channels), after ``--warmup`` untimed calls, over ``--iters`` timed calls; reports the median
time and the peak memory beyond the output tensor:

* CUDA: ``torch.cuda.max_memory_allocated`` during one call minus the output's bytes;
* CPU: the peak of live tensor storages created during one call (a TorchDispatchMode counter, as
  in sr-layers' memory test) minus the output's bytes.

The head alone is measured (the ESC body's cost does not depend on the output scale).

Usage::

    uv run python packages/sr-models/benchmarks/bench_lte.py --device cpu --size 48 --scales 2,4,12 \
        --chunks 4096,16384 --warmup 1 --iters 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sr_layers.lte import LTE, output_size


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages created by the ops run under the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.refs: dict[int, list[int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self.refs:
                    self.refs[key][0] += 1
                else:
                    self.refs[key] = [1, storage.nbytes()]
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, key)
        return out

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self.refs[key]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=64, help="LR side (default 64)")
    p.add_argument("--scales", default="2,4,12,30")
    p.add_argument("--chunks", default="16384")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    feat = torch.randn(1, 64, args.size, args.size, device=device)
    rows = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        lte = LTE(64, 256, (256, 256, 256), query_chunk=chunk).to(device).eval()
        for scale in (float(s) for s in args.scales.split(",")):
            size = output_size((args.size, args.size), scale)
            with torch.no_grad():
                for _ in range(args.warmup):
                    lte(feat, size)
                times = []
                for _ in range(args.iters):
                    _sync(device)
                    t0 = time.perf_counter()
                    lte(feat, size)
                    _sync(device)
                    times.append(time.perf_counter() - t0)
                out_bytes = 3 * size[0] * size[1] * 4
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                    lte(feat, size)
                    _sync(device)
                    peak = torch.cuda.max_memory_allocated(device) - base
                else:
                    tracker = LiveBytes()
                    with tracker:
                        lte(feat, size)
                    peak = tracker.peak
            rows.append({"chunk": chunk, "scale": scale, "output": f"{size[1]}x{size[0]}",
                         "median_s": statistics.median(times), "peak_beyond_output_mb": (peak - out_bytes) / 2**20,
                         "output_mb": out_bytes / 2**20})
            r = rows[-1]
            print(f"chunk {chunk:>6}  x{scale:<5g} out {r['output']:>11}  median {r['median_s'] * 1e3:9.1f} ms  "
                  f"peak beyond output {r['peak_beyond_output_mb']:8.1f} MiB  (output {r['output_mb']:.1f} MiB)")
    meta = {"device": str(device), "torch": torch.__version__, "machine": platform.machine(),
            "threads": torch.get_num_threads(), "lr_size": args.size, "warmup": args.warmup, "iters": args.iters}
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
