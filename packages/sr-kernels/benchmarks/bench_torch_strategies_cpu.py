"""CPU timing of the torch backend: the readable reference path vs the fast strategies (not a test).

    uv run python packages/sr-kernels/benchmarks/bench_torch_strategies_cpu.py [--repeats 5] [--n 576] [--threads T]

At the IET shape (B=1, H=6, N=M=576 by default, D=40) and K in {64, 144, 256} it times forward + backward of
gather_scores, gather_values and gather_attention as the torch backend runs them:

* ``reference``: ``reference.gather_*_reference`` forward + ``reference.gather_*_backward_torch`` (what the
  custom ops ran before the fast strategies);
* ``fast``: ``torch_fast`` with the automatic strategy (``use_dense``);
* ``fast-gather``: ``torch_fast`` forced onto the gather strategy (the large-M path).

The index holds uniform random tokens per head (Hi = H) with 10% empty slots. Prints the median of
``--repeats`` runs (after one warm-up) in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from sr_kernels.gather_attention import reference as ref
from sr_kernels.gather_attention import torch_fast as fast


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _ref_scores(t: dict) -> None:
    ref.gather_scores_reference(t["q"], t["k"], t["index"], t["scale"])
    ref.gather_scores_backward_torch(t["grad_s"], t["q"], t["k"], t["index"], t["scale"])


def _ref_values(t: dict) -> None:
    ref.gather_values_reference(t["p"], t["v"], t["index"])
    ref.gather_values_backward_torch(t["grad_o"], t["p"], t["v"], t["index"])


def _ref_attention(t: dict) -> None:
    q, k, v, index, scale = t["q"], t["k"], t["v"], t["index"], t["scale"]
    out, lse = ref.gather_attention_reference(q, k, v, index, scale)
    ref.gather_attention_backward_torch(t["grad_o"], None, q, k, v, index, None, out, lse, scale)


def _fast_scores(t: dict, dense: bool | None = None) -> None:
    fast.scores_forward(t["q"], t["k"], t["index"], t["scale"], dense=dense)
    fast.scores_backward(t["grad_s"], t["q"], t["k"], t["index"], t["scale"], dense=dense)


def _fast_values(t: dict, dense: bool | None = None) -> None:
    fast.values_forward(t["p"], t["v"], t["index"], dense=dense)
    fast.values_backward(t["grad_o"], t["p"], t["v"], t["index"], dense=dense)


def _fast_attention(t: dict, dense: bool | None = None) -> None:
    q, k, v, index, scale = t["q"], t["k"], t["v"], t["index"], t["scale"]
    out, lse = fast.attention_forward(q, k, v, index, scale, dense=dense)
    fast.attention_backward(t["grad_o"], None, q, k, v, index, None, out, lse, scale, dense=dense)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=576)
    parser.add_argument("--ks", type=int, nargs="+", default=[64, 144, 256])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b, h, n, d = 1, 6, args.n, 40
    m = n
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    scale = d**-0.5
    print(f"threads={torch.get_num_threads()} B={b} H={h} N=M={n} D={d}; median of {args.repeats} (ms)")
    print(
        f"{'K':>4} {'op':>10} {'reference':>10} {'fast':>8} {'strategy':>9} {'fast-gather':>12} {'speed-up':>9}"
    )
    for kk in args.ks:
        index = torch.randint(0, m, (b, h, n, kk), generator=g)
        index[torch.rand(index.shape, generator=g) < 0.1] = -1
        grad_s = torch.randn(b, h, n, kk, generator=g)
        grad_o = torch.randn(b, h, n, d, generator=g)
        p = torch.rand(b, h, n, kk, generator=g)

        t = {
            "q": q,
            "k": k,
            "v": v,
            "index": index,
            "grad_s": grad_s,
            "grad_o": grad_o,
            "p": p,
            "scale": scale,
        }
        ref_scores, ref_values, ref_attention = (
            partial(fn, t) for fn in (_ref_scores, _ref_values, _ref_attention)
        )
        fast_scores, fast_values, fast_attention = (
            partial(fn, t) for fn in (_fast_scores, _fast_values, _fast_attention)
        )
        strategy = "dense" if fast.use_dense(m, kk, d) else "gather"
        with torch.no_grad():
            for name, r, f in (
                ("scores", ref_scores, fast_scores),
                ("values", ref_values, fast_values),
                ("attention", ref_attention, fast_attention),
            ):
                t_ref = _median_ms(r, args.repeats)
                t_fast = _median_ms(f, args.repeats)
                t_gather = _median_ms(lambda f=f: f(dense=False), args.repeats)
                print(
                    f"{kk:>4} {name:>10} {t_ref:>10.1f} {t_fast:>8.1f} {strategy:>9} {t_gather:>12.1f} "
                    f"{t_ref / t_fast:>8.1f}x"
                )


if __name__ == "__main__":
    main()
