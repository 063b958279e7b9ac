"""CPU cost of IET training steps at the quick preset's shapes (not a test).

    uv run python packages/sr-models/benchmarks/time_iet_cpu_step.py [--models iet iet-light] [--repeats 4]
    uv run python packages/sr-models/benchmarks/time_iet_cpu_step.py --models iet --eval-side 96

Builds each full-size model at x2 and times ``model(x).abs().mean().backward()`` on a batch of 2
random LR patches (iet: 12x12, the quick preset; iet-light: 8x8, the sr-train test's size) with one
torch thread, measured as **process CPU time** (``time.process_time``), which stays meaningful on a
shared, loaded machine where wall time does not. The first repeat is warm-up; the median of the
others is printed. With ``--eval-side S`` it instead runs one eval forward (``torch.no_grad``) of
each model on a 1x3xSxS LR image and prints its CPU time and the process's peak RSS (run one model
per process for a clean peak). To compare with another checkout in the same session, put its package sources
first on PYTHONPATH (e.g. ``PYTHONPATH=OLD/packages/sr-kernels/src:OLD/packages/sr-layers/src:
OLD/packages/sr-models/src``); the script prints which sources it imported.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

SIDES = {"iet": 12, "iet-light": 8}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["iet", "iet-light"], choices=sorted(SIDES))
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--eval-side", type=int, default=None, help="one eval forward on an SxS LR image instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import sr_layers
    import sr_models

    print("sources:", sr_layers.__file__.rsplit("/packages/", 1)[0])
    for name in args.models:
        torch.manual_seed(0)
        if args.eval_side:
            model = sr_models.create_model(name, 2).eval()
            x = torch.rand(1, 3, args.eval_side, args.eval_side)
            t0 = time.process_time()
            with torch.no_grad():
                model(x)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
            print(f"{name} x2 eval, {args.eval_side}x{args.eval_side} LR: {time.process_time() - t0:.1f} CPU s, "
                  f"peak RSS {rss:.2f} GiB", flush=True)
            continue
        model = sr_models.create_model(name, 2).train()
        x = torch.rand(2, 3, SIDES[name], SIDES[name])
        times = []
        for _ in range(args.repeats):
            model.zero_grad(set_to_none=True)
            t0 = time.process_time()
            model(x).abs().mean().backward()
            times.append(time.process_time() - t0)
        med = statistics.median(times[1:] or times)
        print(f"{name} x2 train step, batch 2 of {SIDES[name]}x{SIDES[name]}: median {med:.3f} CPU s "
              f"(repeats {' '.join(f'{t:.2f}' for t in times)})", flush=True)


if __name__ == "__main__":
    main()
