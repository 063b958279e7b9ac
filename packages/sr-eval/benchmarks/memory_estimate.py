"""How well the probe-based memory estimate of sr_eval.memory predicts the real peak of a forward.

    uv run python packages/sr-eval/benchmarks/memory_estimate.py --model esc-light --scale 2 --sizes 128 256 288

Measures the model's cost line once (the probe the commands use), then for each LR side N runs one
warm forward of N x N and measures the memory it added at its peak (CPU: VmHWM reset through
/proc/self/clear_refs; CUDA: max_memory_allocated), twice, taking the larger. Prints, per size, the
estimate without and with the safety factor and the measured peak, as JSON lines.
Random weights: memory does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sr_eval.inference import forward_padded, pad_policy
from sr_eval.loading import load_model, pick_device
from sr_eval.memory import SAFETY, PeakMeter, measure_cost


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="esc-light")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32")
    args = p.parse_args()
    device = pick_device(args.device)
    model = load_model(args.model, args.scale, None, allow_random_weights=True, device=device)
    t0 = time.perf_counter()
    cost = measure_cost(model, device, args.precision)
    print(json.dumps({"model": args.model, "scale": args.scale, "device": str(device), "probe_s": round(time.perf_counter() - t0, 1),
                      "per_pixel_B": round(cost.per_pixel), "fixed_MiB": round(cost.fixed / 2**20, 1),
                      "probes": cost.probes}), flush=True)
    m = pad_policy(model).multiple
    for n in args.sizes:
        side = -(-n // m) * m
        x = torch.rand(1, 3, n, n, generator=torch.Generator().manual_seed(0)).to(device)
        peaks = []
        for _ in range(2):
            with PeakMeter(device, reset_hwm=True) as meter, torch.no_grad():
                y = forward_padded(model, x, precision=args.precision)
                del y
            peaks.append(meter.peak)
        raw = cost.fixed + cost.per_pixel * side * side
        print(json.dumps({"lr_side": n, "padded": side, "estimate_MiB": round(raw / 2**20),
                          "estimate_with_safety_MiB": round(SAFETY * raw / 2**20),
                          "measured_MiB": round(max(peaks) / 2**20), "estimate_over_measured": round(raw / max(peaks), 2)}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
