"""Static GPU resources of every sr-kernels Triton kernel, without a GPU (not a test).

    uv run python packages/sr-kernels/benchmarks/kernel_resources.py [--jobs 2] [--quick] [--json F] [--markdown F]
    uv run python packages/sr-kernels/benchmarks/kernel_resources.py --lanes [--markdown F]

Default mode: compiles the case matrix of ``sr_kernels._aot`` (every kernel, every autotune config the
launchers can pick, fp32 / bf16 / fp16, int32 / int64 index, D = 40 / 18 and the test dims) for sm_80 and
sm_90a and prints the table: kernel, config, dtype, index dtype, D, variant, arch, registers, spill bytes
(stores / loads), shared bytes, tensor-core instructions (``mma`` / ``wgmma`` in the PTX). These are the
static figures of ptxas (the log of the ptxas run Triton itself makes for the cubin), not a GPU run.

``--lanes``: runs the forward kernels once in the Triton interpreter (TRITON_INTERPRET=1, in a
subprocess) at D = 40 and D = 18 and counts, over every ``tl.load``, the lanes issued and the lanes that
carry data (the mask); idle lanes are the cost of padding D to a power of two (registers and
instructions; masked lanes move no bytes). Prints lanes issued, lanes with data, idle share and bytes.

Both modes run in a fresh subprocess with the right TRITON_INTERPRET setting (and, for the compile
mode, a fresh TRITON_CACHE_DIR), whatever the calling environment has.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def _lanes_child(out_path: str) -> None:
    """Runs with TRITON_INTERPRET=1: count load lanes of the forward kernels at D = 40 and 18."""
    import torch
    from triton.runtime import interpreter

    counts = {"issued": 0, "active": 0, "bytes": 0}
    orig = interpreter.InterpreterBuilder.create_masked_load

    def counting_load(self, ptrs, mask, other, cache_policy, is_volatile):
        m = mask.data
        counts["issued"] += int(m.size)
        active = int(m.sum())
        counts["active"] += active
        counts["bytes"] += active * ptrs.get_element_ty().primitive_bitwidth // 8
        return orig(self, ptrs, mask, other, cache_policy, is_volatile)

    interpreter.InterpreterBuilder.create_masked_load = counting_load
    import sr_kernels

    rows = []
    g = torch.Generator().manual_seed(0)
    b, h, n, kk = 1, 2, 64, 64  # K a power of two: idle lanes come from D alone
    for d in (40, 18):
        q, k, v = (torch.randn(b, h, n, d, generator=g).half() for _ in range(3))
        index = torch.randint(0, n, (b, 1, n, kk), generator=g)
        cases = {
            "gather_attention fwd (_attn_fwd_kernel)":
                lambda q=q, k=k, v=v, index=index: sr_kernels.gather_attention(q, k, v, index, backend="triton"),
            "gather_scores (_sddmm_kernel, D padded)":
                lambda q=q, k=k, index=index: sr_kernels.gather_scores(q, k, index, backend="triton"),
        }
        if hasattr(sr_kernels, "iea_attention"):
            cases["iea_attention fwd (_iea_fwd_row_kernel), all-K AV"] = (
                lambda q=q, k=k, v=v, index=index: sr_kernels.iea_attention(q, k, v, index, keep=kk // 2,
                                                                            backend="triton"))
        for name, fn in cases.items():
            for key in counts:
                counts[key] = 0
            fn()
            rows.append({"op": name, "d": d, **counts})
    with open(out_path, "w") as f:
        json.dump(rows, f)


def _lanes_table(rows: list[dict]) -> str:
    lines = ["| op | D | load lanes issued | lanes with data | idle lanes | bytes loaded |", "|---|---|---|---|---|---|"]
    for r in rows:
        idle = 1 - r["active"] / r["issued"] if r["issued"] else 0.0
        lines.append(f"| {r['op']} | {r['d']} | {r['issued']:,} | {r['active']:,} | {100 * idle:.1f}% | {r['bytes']:,} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="compile worker processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="forward kernels at D = 40 only")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--markdown", default=None, help="also write the markdown table here")
    parser.add_argument("--lanes", action="store_true", help="interpreter lane counts instead of ptxas figures")
    parser.add_argument("--_lanes-child", dest="lanes_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lanes_child:
        _lanes_child(args.lanes_child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        env = dict(os.environ)
        if args.lanes:
            env["TRITON_INTERPRET"] = "1"
            cmd = [sys.executable, os.path.abspath(__file__), "--_lanes-child", out]
        else:
            env.pop("TRITON_INTERPRET", None)
            env["TRITON_CACHE_DIR"] = os.path.join(tmp, "cache")
            env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
            cmd = [sys.executable, "-m", "sr_kernels._aot", "--jobs", str(args.jobs), "--json", out]
            if args.quick:
                cmd.append("--quick")
        proc = subprocess.run(cmd, env=env, check=False)
        if proc.returncode != 0 or not os.path.exists(out):
            print(f"error: {' '.join(cmd)} exited with {proc.returncode}", file=sys.stderr)
            return 1
        with open(out) as f:
            rows = json.load(f)
    if args.lanes:
        table = _lanes_table(rows)
    else:
        from sr_kernels._aot import Resource, markdown_table

        fields = set(Resource.__dataclass_fields__)
        table = markdown_table([Resource(**{k: v for k, v in r.items() if k in fields}) for r in rows])
    print(table)
    for path, text in ((args.json, json.dumps(rows, indent=1)), (args.markdown, table + "\n")):
        if path:
            tmp_path = path + ".tmp"
            with open(tmp_path, "w") as f:
                f.write(text)
            os.replace(tmp_path, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
