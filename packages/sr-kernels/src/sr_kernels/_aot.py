"""Ahead-of-time GPU compilation of every Triton kernel of sr-kernels, on a machine without a GPU.

Triton compiles for NVIDIA targets without a driver: ``triton.compile(ASTSource(...), target=GPUTarget(
"cuda", 80 | 90, 32))`` gives PTX and a cubin, and the bundled ``ptxas -v`` reports registers, spills and
shared memory. This module is what the CI test (``tests/test_kernels_aot_compile.py``) and the resource
table (``benchmarks/kernel_resources.py``) share.

How the compile cases are made: each launcher of the package (``attention_fwd``, ``sddmm``, ``iea_fwd``,
``iea_bwd``, ...) is called on small CPU tensors with Triton's launch entry points patched to *record*
the call instead of running it. A recorded call holds the exact arguments the launcher passes (strides,
constexprs, num_warps); for an autotuned kernel every config the autotuner could pick for those arguments
(after the kernel's own config pruning) becomes its own case. Each case is then specialised exactly as
Triton's JIT would do it (``create_function_from_signature`` + ``_pack_args``: dtypes, 16-byte alignment,
integers equal to 1 or divisible by 16) and compiled for sm_80 and sm_90a. So the checks follow the
launchers: a new kernel, config or constexpr is covered as soon as a launcher uses it and a case below
calls that launcher.

Needs ``TRITON_INTERPRET`` unset in the process (the kernels must be real ``JITFunction``s and the
launchers must pick their GPU configs): run it as ``python -m sr_kernels._aot`` (the test does, in a
subprocess). Use a fresh ``TRITON_CACHE_DIR`` to really compile (the test does).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import torch

#: Max dynamic shared memory per block on sm_80 (A100: 163 KB opt-in); the smallest of our targets.
SM80_MAX_SHARED = 166912
ARCHS = (80, 90)
FORWARD_KERNELS = (
    "_attn_fwd_kernel", "_sddmm_kernel", "_spmm_kernel", "_topk_slots_kernel", "_expand_kernel",
    "_iea_fwd_row_kernel", "_iea_fwd_union_kernel",
)
#: Where every @triton.jit kernel of the package lives (the test checks the list is complete).
KERNEL_MODULES = (
    "sr_kernels.gather_attention.triton_fwd",
    "sr_kernels.gather_attention.triton_bwd",
    "sr_kernels._triton_graph",
    "sr_kernels.iea_attention.triton_fwd",
    "sr_kernels.iea_attention.triton_bwd",
)


@dataclasses.dataclass
class Case:
    """One kernel specialisation to compile: the kernel (module + attribute), its launch arguments
    (tensors replaced by their dtypes), launch options and a label for the table."""

    module: str
    attr: str
    args: list
    kwargs: dict
    label: dict
    archs: tuple[int, ...] = ARCHS

    @property
    def kernel(self) -> str:
        return self.attr


@dataclasses.dataclass
class Resource:
    """Static ptxas figures of one compiled case for one arch."""

    kernel: str
    config: str
    dtype: str
    index_dtype: str
    d: int
    variant: str
    arch: str
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    shared: int = -1
    tensor_cores: bool = False
    compile_s: float = 0.0
    error: str = ""

    @property
    def forward(self) -> bool:
        return self.kernel in FORWARD_KERNELS

    def problems(self) -> list[str]:
        """Why this case fails the CI check (empty when it passes)."""
        what = f"{self.kernel} [{self.config}] {self.dtype}/{self.index_dtype} D={self.d} {self.variant} {self.arch}"
        if self.error:
            return [f"{what}: compile error: {self.error}"]
        out = []
        if self.forward and (self.spill_stores > 0 or self.spill_loads > 0):
            out.append(f"{what}: forward kernel spills ({self.spill_stores} B stores, {self.spill_loads} B loads)")
        if self.shared > SM80_MAX_SHARED:
            out.append(f"{what}: {self.shared} B shared memory > the sm_80 limit {SM80_MAX_SHARED}")
        return out


# ----------------------------------------------------------------------------------------------
# recording launches
# ----------------------------------------------------------------------------------------------


class _TensorStandIn:
    """What a tensor argument is replaced by in a recorded case (only the dtype matters to Triton's
    specialisation; real tensors from the allocator are 16-byte aligned, and so are the stand-ins)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def materialise(self) -> torch.Tensor:
        return torch.empty(64, dtype=self.dtype)


def _strip(x):
    return _TensorStandIn(x.dtype) if isinstance(x, torch.Tensor) else x


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[object, tuple, dict]]]:
    """Patch Triton's launch entry points so that ``kernel[grid](...)`` records (kernel, args, kwargs)."""
    from triton.runtime import autotuner, jit

    calls: list[tuple[object, tuple, dict]] = []

    def fake_run(self, *args, grid=None, warmup=False, **kwargs):
        calls.append((self, args, kwargs))

    saved = (jit.JITFunction.run, autotuner.Autotuner.run)
    heur = getattr(autotuner, "Heuristics", None)
    saved_h = heur.run if heur is not None else None
    jit.JITFunction.run = fake_run
    autotuner.Autotuner.run = fake_run
    if heur is not None:
        heur.run = fake_run
    try:
        yield calls
    finally:
        jit.JITFunction.run, autotuner.Autotuner.run = saved
        if heur is not None:
            heur.run = saved_h


def _jit_function(obj):
    """The JITFunction under an Autotuner / Heuristics wrapper."""
    from triton.runtime.jit import JITFunction

    while not isinstance(obj, JITFunction):
        obj = obj.fn
    return obj


def _cases_from_calls(calls, label: dict, archs: tuple[int, ...] = ARCHS) -> list[Case]:
    from triton.runtime import autotuner

    cases = []
    for obj, args, kwargs in calls:
        if isinstance(obj, autotuner.Autotuner):
            configs = obj.configs
            if getattr(obj, "early_config_prune", None):
                configs = obj.early_config_prune(configs, dict(zip(obj.arg_names, args)), **kwargs)
            fn = obj.fn
            variants = []
            for cfg in configs:
                kw = dict(kwargs)
                kw.update(cfg.kwargs)
                kw["num_warps"] = cfg.num_warps
                kw["num_stages"] = cfg.num_stages
                variants.append((kw, ",".join(f"{k}={v}" for k, v in cfg.kwargs.items()) + f",w={cfg.num_warps}"))
        else:
            fn = obj
            meta = {k: v for k, v in kwargs.items() if k in ("BM", "BK", "BR", "BJ", "BE", "BQ", "UP", "num_warps")}
            variants = [(dict(kwargs), ",".join(f"{k}={v}" for k, v in meta.items()))]
        fn = _jit_function(fn)
        for kw, cfg in variants:
            cases.append(Case(fn.__module__, fn.__name__, [_strip(a) for a in args],
                              {k: _strip(v) for k, v in kw.items()}, {**label, "config": cfg}, archs))
    return cases


# ----------------------------------------------------------------------------------------------
# the case matrix: every launcher, every autotune config, dtypes, index dtypes, head dims
# ----------------------------------------------------------------------------------------------

MODEL_DIMS = (40, 18)  # IET (240 / 6), IET-light (54 / 3)
TEST_DIMS = (16, 32, 64)
AOT_TEST_DIMS = (16, 64)  # the smallest and largest test dim (32 is the D = 18 / D = 40 pad of the gather kernels)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INDEX_DTYPES = {"i32": torch.int32, "i64": torch.int64}


def _tensors(dtype, d, ks, idx_dtype, *, n=192, heads=2, bias=True):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, n, d, generator=g).to(dtype)
    k = torch.randn(1, heads, n, d, generator=g).to(dtype)
    v = torch.randn(1, heads, n, d, generator=g).to(dtype)
    index = torch.randint(0, n, (1, 1, n, ks), generator=g).to(idx_dtype)
    b = torch.randn(1, heads, n, ks, generator=g) if bias else None
    return q, k, v, index, b


def _launch_gather(dtype, d, idx_dtype, bias: bool, *, ks=144):
    from .gather_attention import triton_bwd, triton_fwd

    q, k, v, index, b = _tensors(dtype, d, ks, idx_dtype, bias=bias)
    out, lse = triton_fwd.attention_fwd(q, k, v, index, b, 0.1)
    triton_bwd.attention_bwd(torch.randn_like(q), None, q, k, v, index, b, out, lse, 0.1, b is not None)


def _launch_halves(dtype, d, idx_dtype, *, ks=144):
    from .gather_attention import triton_bwd, triton_fwd

    q, k, v, index, b = _tensors(dtype, d, ks, idx_dtype)
    triton_fwd.sddmm(q, k, index, 0.1, b, empty_neg_inf=True, out_dtype=torch.float32)
    p = torch.rand(1, q.shape[1], q.shape[2], ks)
    triton_fwd.spmm(p, v, index, 1.0, out_dtype=dtype)
    triton_bwd.scatter_rows(p, q, index, k.shape[2], 0.1, dtype)


def _launch_graph(idx_dtype, *, ks=256, expand=True):
    from . import _triton_graph

    n = 192
    scores = torch.randn(1, 2, n, ks)
    index = torch.randint(0, n, (1, 2, n, ks)).to(idx_dtype)
    _triton_graph.topk_slots(scores, index, 96)
    if not expand:
        return
    tok = torch.randint(0, n, (1, 2, n, 24))
    _triton_graph.expand(index[..., :96], tok, torch.rand(1, 2, n, 24), 22, 12, 256)


def _launch_iea(dtype, d, idx_dtype, *, ks, keep, on_selected, bias=True, prior=True, union=False,
                deterministic=False, backward=True):
    from .iea_attention import triton_bwd, triton_fwd
    from .iea_attention.union import iea_tile_union

    plan = []
    if union:
        from .dlsg import dlsg_index

        if union == "iet":  # IET's DLSG geometry (w 8, 12 x 12 samples, K 208), 1 x 16 tiles: UP = 512
            dl = dlsg_index(32, 32, local=8, samples=12, dilation=2)
            max_union = 280  # unions are 272..288: the wider tiles' rows run the per-query kernel (row list)
        else:  # a small DLSG list; max_union 60 leaves some tiles too wide, so both kernels launch
            dl = dlsg_index(16, 12, local=4, samples=3, dilation=2)
            max_union = 60
        n, ks = dl.shape
        q, k, v, _, b = _tensors(dtype, d, ks, idx_dtype, n=n, bias=bias)
        index = dl.to(idx_dtype).view(1, 1, n, ks)
        plan = iea_tile_union(index, max_union=max_union).tensors()
    else:
        q, k, v, index, b = _tensors(dtype, d, ks, idx_dtype, bias=bias)
    pr = torch.randn(1, q.shape[1], q.shape[2], ks) if prior else None
    out, lse, _kidx, _klogp, kslot = triton_fwd.iea_fwd(q, k, v, index, b, pr, 0.1, keep, on_selected, plan)
    if backward:  # the forward did not run: give the backward a valid kept-slot tensor
        kslot = torch.randint(0, ks, kslot.shape)
        triton_bwd.iea_bwd(torch.randn_like(q), None, torch.randn(kslot.shape), q, k, v, index, b, pr, out, lse,
                           kslot, 0.1, on_selected, True, deterministic)


def case_matrix(*, quick: bool = False) -> list[Case]:
    """The compile cases: a covering design, not the full cross product (which would take ~20 minutes).

    * every autotune config of every kernel, at IET's D = 40 with an int32 index and every optional
      input on (bias, prior, kept-only AV: the largest register footprint); forward kernels in fp32 with
      an int64 index (the most registers) on sm_80 and sm_90a and in bf16 / int32 on sm_90a, backward kernels in bf16 on sm_90a (plus
      their first config on sm_80). The fused IEA forward prunes its configs by the row width KP, so each
      config is compiled at the largest KP it is allowed at: the most registers it can need;
    * IET-light's D = 18 (and the tile-union kernel, the deterministic backward) at the first config
      on both archs (D = 18 tiles are never larger than D = 40 ones for the same config);
    * fp32 on both archs and fp16 on sm_90a, with an int64 index, first configs (the expansion kernel:
      int32 only, see below);
    * the test head dims 16 and 64 for the IEA kernels on sm_90a, first configs (32 is a power of two
      like them; the gather kernels pad D to a power of two, so 32 and 64 are their D = 18 / D = 40).

    Cases that specialise a kernel identically are compiled once.

    ``quick``: only the first bullet's forward kernels at D = 40 (a smoke test).
    """
    cases: list[Case] = []
    both, hopper = ARCHS, (90,)

    def add(fn: Callable[[], None], label: dict, *, all_configs: bool, fwd_archs=both, bwd_archs=hopper,
            backward_only: bool = False) -> None:
        with recording() as calls:
            fn()
        found = _cases_from_calls(calls, label)
        if backward_only:
            found = [c for c in found if c.attr not in FORWARD_KERNELS]
        if not all_configs:
            found = _first_configs(found)
        for c in found:
            c.archs = fwd_archs if c.attr in FORWARD_KERNELS else bwd_archs
        cases.extend(c for c in found if c.archs)
        if all_configs and bwd_archs and bwd_archs != both:  # first config of each backward kernel on the other arch too
            for c in _first_configs([c for c in found if c.attr not in FORWARD_KERNELS]):
                cases.append(dataclasses.replace(c, archs=tuple(a for a in both if a not in bwd_archs)))

    bf16, f32, i32, i64 = torch.bfloat16, torch.float32, torch.int32, torch.int64
    lab = dict(dtype="bf16", idx="i32", d=40)
    lab32 = dict(dtype="fp32", idx="i64", d=40)
    # each fused-forward config at the widest row it may run (the autotuner prunes configs by KP); fp32
    # (the most registers: fp32 rows take twice the load registers of bf16 ones) on both archs, bf16 (the
    # production dtype, for the table) on sm_90a
    from .iea_attention import _launch as iea_launch

    widest = _widest_rows(iea_launch)
    for kp in sorted(set(widest.values())):
        keep = max(1, 3 * kp // 4)
        for dt, it, lb, archs in ((f32, i64, lab32, both), (bf16, i32, lab, hopper)):
            before = len(cases)
            add(lambda kp=kp, keep=keep, dt=dt, it=it: _launch_iea(dt, 40, it, ks=kp, keep=keep, on_selected=True,
                                                            backward=kp == 256 and dt == bf16 and not quick),
                {**lb, "variant": f"K={kp},keep={keep},sel,bias,prior"}, all_configs=True, fwd_archs=archs)
            cases[before:] = [c for c in cases[before:] if c.attr != "_iea_fwd_row_kernel"
                              or widest.get(_config_tuple(c)) == kp]
    add(lambda: _launch_gather(f32, 40, i64, True), {**lab32, "variant": "K=144,bias"}, all_configs=True,
        backward_only=False, bwd_archs=())
    add(lambda: _launch_gather(bf16, 40, i32, True), {**lab, "variant": "K=144,bias"}, all_configs=True,
        fwd_archs=hopper)
    if quick:
        return [c for c in cases if c.attr in FORWARD_KERNELS]
    add(lambda: _launch_halves(bf16, 40, i32), {**lab, "variant": "K=144,bias"}, all_configs=True, bwd_archs=both)
    add(lambda: _launch_graph(i32), dict(dtype="fp32", idx="i32", d=0, variant="K=256"), all_configs=True)
    add(lambda: _launch_iea(bf16, 40, i32, ks=0, keep=160, on_selected=True, union="iet", backward=False),
        {**lab, "variant": "DLSG K=208,keep=160,tile-union"}, all_configs=False)
    add(lambda: _launch_iea(bf16, 40, i32, ks=256, keep=192, on_selected=False, deterministic=True),
        {**lab, "variant": "K=256,all-K,deterministic"}, all_configs=False, bwd_archs=both, backward_only=True)
    lab18 = dict(dtype="bf16", idx="i32", d=18)
    add(lambda: _launch_iea(bf16, 18, i32, ks=256, keep=192, on_selected=True, deterministic=True),
        {**lab18, "variant": "K=256,keep=192,sel,deterministic"}, all_configs=False, bwd_archs=both,
        backward_only=True)
    add(lambda: _launch_iea(bf16, 18, i32, ks=0, keep=160, on_selected=True, union="iet", backward=False),
        {**lab18, "variant": "DLSG K=208,keep=160,tile-union"}, all_configs=False)
    add(lambda: _launch_iea(bf16, 18, i32, ks=208, keep=160, on_selected=False),
        {**lab18, "variant": "K=208,all-K"}, all_configs=False, bwd_archs=both)
    add(lambda: _launch_gather(bf16, 18, i32, True), {**lab18, "variant": "K=144,bias"}, all_configs=False,
        bwd_archs=both)
    add(lambda: _launch_halves(bf16, 18, i32), {**lab18, "variant": "K=144"}, all_configs=False, bwd_archs=both)
    for dname, archs in (("fp32", both), ("fp16", hopper)):
        dt = DTYPES[dname]

        def launch(dt=dt):
            _launch_gather(dt, 40, i64, False)
            _launch_halves(dt, 40, i64)
            _launch_iea(dt, 40, i64, ks=208, keep=160, on_selected=False, bias=False, prior=True, deterministic=True)
            _launch_iea(dt, 40, i64, ks=0, keep=160, on_selected=False, bias=False, union="iet", backward=False)

        add(launch, dict(dtype=dname, idx="i64", d=40, variant="K=208,prior"), all_configs=False,
            fwd_archs=archs, bwd_archs=archs)
    # int64 lists for the selection kernel; the expansion kernel (the slowest compile, ~20 s: two sorts of
    # 512 int64 per row) loads its index with the same masked-load-then-cast code and stays at int32
    add(lambda: _launch_graph(i64, expand=False), dict(dtype="fp32", idx="i64", d=0, variant="K=256"),
        all_configs=False, fwd_archs=hopper)
    for d in AOT_TEST_DIMS:
        add(lambda d=d: _launch_iea(bf16, d, i32, ks=144, keep=96, on_selected=True),
            dict(dtype="bf16", idx="i32", d=d, variant="K=144,keep=96,sel"), all_configs=False, fwd_archs=hopper)
    return _dedupe(cases)


def _dedupe(cases: list[Case]) -> list[Case]:
    """Merge cases that specialise a kernel identically (same arguments up to the tensors' dtypes)."""
    seen: dict[str, Case] = {}
    for c in cases:
        key = repr((c.module, c.attr, [(type(a).__name__, getattr(a, "dtype", a)) for a in c.args],
                    sorted((k, str(getattr(v, "dtype", v))) for k, v in c.kwargs.items())))
        if key in seen:
            seen[key].archs = tuple(sorted(set(seen[key].archs) | set(c.archs)))
        else:
            seen[key] = c
    return list(seen.values())


def _config_tuple(case: Case) -> tuple[int, int, int]:
    return (case.kwargs.get("BM"), case.kwargs.get("WS"), case.kwargs.get("num_warps"))


def _widest_rows(iea_launch) -> dict[tuple[int, int, int], int]:
    """For every fused-forward config, the largest row width KP (16..1024) the pruning lets it run."""
    out = {}
    for kp in (16, 32, 64, 128, 256, 512):
        for cfg in iea_launch.prune_row_configs(iea_launch.row_configs(), kp):
            out[cfg] = kp
    return out


def _first_configs(cases: list[Case]) -> list[Case]:
    seen, out = set(), []
    for c in cases:
        if c.attr not in seen:
            seen.add(c.attr)
            out.append(c)
    return out


# ----------------------------------------------------------------------------------------------
# compiling one case
# ----------------------------------------------------------------------------------------------

_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def _parse_ptxas(log: str) -> dict[str, int]:
    out = {}
    for key, rx in _PTXAS_RE.items():
        vals = [int(x) for x in rx.findall(log)]
        out[key] = max(vals) if vals else -1
    return out


def _ptxas_rerun(ptx: str, arch: int) -> str:
    """Fallback when Triton cannot hand out its own ptxas log: run the bundled ptxas on the PTX with the
    flags Triton 3.9 uses (``--regAllocOptLevel=2`` changes the register allocation, so it matters)."""
    from triton.backends.nvidia import compiler as nv

    sm = nv.sm_arch_from_capability(arch)
    ptxas = nv.get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={sm}", src, "-o", src + ".o"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {(proc.stdout + proc.stderr)[-1500:]}")
    return proc.stdout + proc.stderr


def compile_case(case: Case, arch: int) -> Resource:
    """Compile ``case`` for ``arch`` (80 or 90) and read ptxas' report; errors are returned, not raised."""
    label = case.label
    res = Resource(kernel=case.kernel, config=label["config"], dtype=label["dtype"], index_dtype=label["idx"],
                   d=label["d"], variant=label["variant"], arch="sm_80" if arch == 80 else "sm_90a")
    t0 = time.perf_counter()
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature

        fn = _jit_function(getattr(importlib.import_module(case.module), case.attr))
        args = [a.materialise() if isinstance(a, _TensorStandIn) else a for a in case.args]
        kwargs = {k: (v.materialise() if isinstance(v, _TensorStandIn) else v) for k, v in case.kwargs.items()}
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, spec, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, options)
        # Triton runs ptxas -v itself to build the cubin; its log (the exact flags of the real build) is
        # printed when knobs.nvidia.dump_ptxas_log is set
        from triton import knobs

        buf = io.StringIO()
        has_knob = hasattr(knobs.nvidia, "dump_ptxas_log")
        if has_knob:
            knobs.nvidia.dump_ptxas_log = True
        try:
            with contextlib.redirect_stdout(buf):
                kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
        finally:
            if has_knob:
                knobs.nvidia.dump_ptxas_log = False
        ptx = kernel.asm["ptx"]
        report = _parse_ptxas(buf.getvalue())
        if report["registers"] < 0:
            report = _parse_ptxas(_ptxas_rerun(ptx, arch))
        res.__dict__.update({k: max(v, 0) for k, v in report.items()})
        res.shared = int(kernel.metadata.shared)
        res.tensor_cores = bool(re.search(r"\b(w?gmma|mma)\.", ptx))
    except Exception as exc:  # reported per case; the check fails on it
        res.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:400]
    res.compile_s = time.perf_counter() - t0
    return res


def _compile_chunk(items: list[tuple[Case, int]]) -> list[Resource]:
    return [compile_case(c, a) for c, a in items]


def run_all(*, jobs: int = 2, quick: bool = False, archs: tuple[int, ...] = ARCHS) -> list[Resource]:
    """Compile the whole case matrix for ``archs`` in ``jobs`` worker processes (spawned, so each starts
    clean, without the parent's Triton state); results in case order."""
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on"):
        raise RuntimeError("TRITON_INTERPRET is set: the AOT checks need real Triton kernels (unset it)")
    cases = case_matrix(quick=quick)
    items = [(c, a) for c in cases for a in c.archs if a in archs]
    if jobs <= 1:
        return _compile_chunk(items)
    import multiprocessing as mp

    # one task per compile, handed out as workers free up (compile times range from 0.3 s to 20 s);
    # the slowest kernels first, so that no long compile is left for the end
    order = sorted(range(len(items)), key=lambda i: -_COST_HINT.get(items[i][0].attr, 1.0))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        done = list(pool.map(_compile_item, [items[i] for i in order], chunksize=1))
    results: list[Resource | None] = [None] * len(items)
    for i, r in zip(order, done):
        results[i] = r
    return [r for r in results if r is not None]


#: Relative compile times (measured on the CI-size machine) used only to schedule the longest first.
_COST_HINT = {"_expand_kernel": 20.0, "_iea_fwd_union_kernel": 8.0, "_iea_fwd_row_kernel": 6.0,
              "_topk_slots_kernel": 4.0, "_iea_bwd_kernel": 2.0, "_attn_bwd_kernel": 2.0}


def _compile_item(item: tuple[Case, int]) -> Resource:
    return compile_case(*item)


def jit_kernel_names() -> set[str]:
    """Names of every @triton.jit kernel (program entry point) defined in :data:`KERNEL_MODULES`,
    helpers excluded (a helper is a jit function no launcher calls with a grid: named ``_*_kernel``)."""
    import triton

    names = set()
    for mod_name in KERNEL_MODULES:
        mod = importlib.import_module(mod_name)
        for name, obj in vars(mod).items():
            if not isinstance(obj, triton.runtime.jit.KernelInterface):
                continue
            fn = _jit_function(obj)
            if fn.__module__ == mod_name and name.endswith("_kernel"):
                names.add(name)
    return names


def markdown_table(results: list[Resource]) -> str:
    head = "| kernel | config | dtype | index | D | variant | arch | registers | spill st/ld (B) | shared (B) | tensor cores |"
    lines = [head, "|" + "---|" * 11]
    for r in results:
        if r.error:
            lines.append(f"| {r.kernel} | {r.config} | {r.dtype} | {r.index_dtype} | {r.d} | {r.variant} | {r.arch} | "
                         f"ERROR: {r.error} | | | |")
            continue
        lines.append(f"| {r.kernel} | {r.config} | {r.dtype} | {r.index_dtype} | {r.d} | {r.variant} | {r.arch} | "
                     f"{r.registers} | {r.spill_stores}/{r.spill_loads} | {r.shared} | {'yes' if r.tensor_cores else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="AOT-compile every sr-kernels Triton kernel for sm_80 / sm_90a.")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="model head dims and bf16 only")
    parser.add_argument("--json", default=None, help="write the results here (JSON list)")
    parser.add_argument("--markdown", action="store_true", help="print the markdown table")
    parser.add_argument("--check", action="store_true", help="exit 1 on a compile error, forward spill or smem over sm_80")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    results = run_all(jobs=args.jobs, quick=args.quick)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump([dataclasses.asdict(r) | {"forward": r.forward} for r in results], f, indent=1)
        os.replace(tmp, args.json)
    if args.markdown:
        print(markdown_table(results))
    problems = [p for r in results for p in r.problems()]
    print(f"{len(results)} compiles in {time.perf_counter() - t0:.0f} s, {len(problems)} problems", file=sys.stderr)
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    return 1 if (args.check and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
