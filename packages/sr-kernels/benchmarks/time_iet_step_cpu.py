"""Time one full-size IET x2 training step on CPU (not a test; needs sr_models from the workspace).

    uv run python packages/sr-kernels/benchmarks/time_iet_step_cpu.py [--repeats 3] [--reference] [--threads T]

Builds ``sr_models.create_model('iet', scale=2)``, feeds torch.rand(1, 3, 24, 24) (N = 576 tokens), runs
forward + ``mean().backward()`` ``repeats`` times and prints each wall time; the first run is warm-up and
the median of the others is the result. ``--reference`` swaps the torch backend's fast strategies
(``gather_attention.torch_fast``) for the readable reference path the custom ops ran before them, for a
before/after comparison in one checkout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _use_reference_path() -> None:
    """Point the custom ops' torch branch back at ``reference`` (what they called before torch_fast)."""
    from sr_kernels.gather_attention import reference as ref
    from sr_kernels.gather_attention import torch_fast

    torch_fast.scores_forward = ref.gather_scores_reference
    torch_fast.scores_backward = ref.gather_scores_backward_torch
    torch_fast.values_forward = ref.gather_values_reference
    torch_fast.values_backward = ref.gather_values_backward_torch
    torch_fast.attention_forward = ref.gather_attention_reference
    torch_fast.attention_backward = ref.gather_attention_backward_torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="run the reference path (the 'before')")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference:
        _use_reference_path()
    import sr_models

    torch.manual_seed(0)
    model = sr_models.create_model("iet", scale=2)
    x = torch.rand(1, 3, 24, 24)
    times = []
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        model(x).mean().backward()
        times.append(time.perf_counter() - t0)
    path = "reference" if args.reference else "fast"
    print(
        f"{path} path, threads {torch.get_num_threads()}, step times (s):",
        " ".join(f"{t:.2f}" for t in times),
    )
    print(f"median after warm-up: {statistics.median(times[1:] or times):.2f} s")


if __name__ == "__main__":
    main()
