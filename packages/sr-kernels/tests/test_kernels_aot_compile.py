"""Every Triton kernel of sr-kernels compiles ahead of time for sm_80 and sm_90a (no GPU needed).

Runs ``python -m sr_kernels._aot --check`` in a subprocess without TRITON_INTERPRET (the root conftest sets
it for this process) and with a fresh TRITON_CACHE_DIR (nothing reused across runs). It fails on any
compile error, on a spill in a forward kernel, or on shared memory above the sm_80 limit; the case matrix
(every autotune config, the dtypes, the index dtypes, the head dims) is described in
``sr_kernels._aot.case_matrix``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

pytest.importorskip("triton")


def _clean_env(cache_dir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = cache_dir
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return env


@pytest.fixture(scope="module")
def aot_results():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "aot.json")
        proc = subprocess.run(
            [sys.executable, "-m", "sr_kernels._aot", "--jobs", "2", "--check", "--json", out],
            env=_clean_env(os.path.join(tmp, "cache")), capture_output=True, text=True, timeout=900,
        )
        results = json.load(open(out)) if os.path.exists(out) else None
    return proc, results


def test_every_kernel_compiles_for_sm80_and_sm90a_without_forward_spills(aot_results):
    proc, results = aot_results
    assert results is not None, proc.stderr[-4000:]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert all(r["registers"] > 0 for r in results), "a case without a ptxas register report"


def test_the_matrix_covers_every_jit_kernel_on_both_archs_and_all_dtypes(aot_results):
    _, results = aot_results
    assert results is not None
    code = (
        "import json, sr_kernels._aot as a; print(json.dumps(sorted(a.jit_kernel_names())))"
    )
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(tmp), capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kernels = set(json.loads(proc.stdout))
    assert len(kernels) >= 11
    for arch in ("sm_80", "sm_90a"):
        assert kernels <= {r["kernel"] for r in results if r["arch"] == arch}, arch
    seen = {(r["kernel"], r["dtype"]) for r in results}
    for kernel in ("_attn_fwd_kernel", "_iea_fwd_row_kernel", "_iea_fwd_union_kernel", "_iea_bwd_kernel"):
        assert {(kernel, dt) for dt in ("fp32", "bf16", "fp16")} <= seen, kernel
    assert {r["index_dtype"] for r in results} == {"i32", "i64"}
    assert {40, 18} <= {r["d"] for r in results}
    # the fused forward's configs are the ones the launcher can pick: every one of them is compiled
    row_cfgs = {r["config"] for r in results if r["kernel"] == "_iea_fwd_row_kernel"}
    assert len(row_cfgs) >= 5


def test_the_check_fails_on_a_forward_spill():
    """The spill / shared-memory / error rules of the check itself (so the CI test can fail)."""
    from sr_kernels._aot import SM80_MAX_SHARED, Resource

    ok = Resource("_iea_fwd_row_kernel", "c", "bf16", "i32", 40, "v", "sm_90a", 128, 0, 0, 4096)
    assert ok.problems() == []
    assert Resource("_iea_fwd_row_kernel", "c", "bf16", "i32", 40, "v", "sm_90a", 255, 8, 8, 0).problems()
    assert Resource("_iea_bwd_kernel", "c", "bf16", "i32", 40, "v", "sm_90a", 255, 8, 8, 0).problems() == []
    assert Resource("_iea_bwd_kernel", "c", "bf16", "i32", 40, "v", "sm_80", 1, 0, 0, SM80_MAX_SHARED + 1).problems()
    assert Resource("_attn_fwd_kernel", "c", "bf16", "i32", 40, "v", "sm_80", error="x").problems()
