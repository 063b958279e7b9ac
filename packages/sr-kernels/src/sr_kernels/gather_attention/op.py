"""Public gather-attention ops: validation, backend dispatch, torch.library custom ops and autograd.

Each op is a ``torch.library.custom_op`` pair (forward and backward) in the ``sr_kernels`` namespace, so
that ``torch.utils.flop_counter.FlopCounterMode`` sees one op per call and counts it with the formulas of
:mod:`sr_kernels.flops` (registered with ``register_flop_formula``), on every backend: the count is the
work of the sparse op (4*B*H*N*K*D for the attention forward), never the einsum count of the reference's
internal gathers. The custom ops also make the calls opaque to ``torch.compile`` (no graph breaks inside).

The torch backend (CPU, and float64 inputs everywhere: the Triton kernels accumulate in fp32) runs
:mod:`.torch_fast` (dense-then-gather for few keys, a lean gather otherwise); :mod:`.reference` stays the
readable oracle the tests compare both backends with.

The op schemas are written out (not inferred from annotations) so the registration works the same on
every torch >= 2.6.
"""

from __future__ import annotations

import sys

import torch

from .. import _checks
from .._dispatch import interpreter_enabled, resolve_backend, triton_available
from . import reference as ref
from . import torch_fast

Tensor = torch.Tensor


def _use_triton(backend: str, *tensors: Tensor) -> bool:
    return backend == "triton" and all(t.dtype != torch.float64 for t in tensors)


def _reduce_to(grad: Tensor, like: Tensor) -> Tensor:
    return grad.sum_to_size(like.shape).to(like.dtype)


# ----------------------------------------------------------------------------------------------
# gather_attention
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op(
    "sr_kernels::gather_attention_fwd",
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor index, Tensor? bias, float scale, str backend) -> (Tensor, Tensor)",
)
def _attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, bias: Tensor | None, scale: float, backend: str
) -> tuple[Tensor, Tensor]:
    if _use_triton(backend, q, k, v):
        from .triton_fwd import attention_fwd

        return attention_fwd(q, k, v, index, bias, scale)
    out, lse = torch_fast.attention_forward(q, k, v, index, scale, bias)
    return out.contiguous(), lse.contiguous()


@_attention_fwd.register_fake
def _(q, k, v, index, bias, scale, backend):
    b, h, n, _ = q.shape
    lse_dtype = torch.float32 if _use_triton(backend, q, k, v) else ref.compute_dtype(q, k, v, bias)
    return q.new_empty(q.shape), q.new_empty((b, h, n), dtype=lse_dtype)


@torch.library.custom_op(
    "sr_kernels::gather_attention_bwd",
    mutates_args=(),
    schema="(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor index, Tensor? bias, "
    "Tensor out, Tensor lse, float scale, bool need_ds, str backend) -> (Tensor, Tensor, Tensor, Tensor)",
)
def _attention_bwd(
    grad_out: Tensor,
    grad_lse: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    bias: Tensor | None,
    out: Tensor,
    lse: Tensor,
    scale: float,
    need_ds: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if _use_triton(backend, q, k, v):
        from .triton_bwd import attention_bwd

        return attention_bwd(grad_out, grad_lse, q, k, v, index, bias, out, lse, scale, need_ds)
    dq, dk, dv, ds = torch_fast.attention_backward(grad_out, grad_lse, q, k, v, index, bias, out, lse, scale)
    return dq, dk, dv, (ds if need_ds else ds.new_empty(0))


@_attention_bwd.register_fake
def _(grad_out, grad_lse, q, k, v, index, bias, out, lse, scale, need_ds, backend):
    b, h, n, _ = q.shape
    ds_shape = (b, h, n, index.shape[-1]) if need_ds else (0,)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), lse.new_empty(ds_shape)


def _attention_setup(ctx, inputs, output):
    q, k, v, index, bias, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, index, bias, out, lse)
    ctx.scale, ctx.backend = scale, backend


def _attention_backward(ctx, grad_out, grad_lse):
    q, k, v, index, bias, out, lse = ctx.saved_tensors
    need_ds = bias is not None and ctx.needs_input_grad[4]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, ds = torch.ops.sr_kernels.gather_attention_bwd(
        grad_out, grad_lse, q, k, v, index, bias, out, lse, ctx.scale, need_ds, ctx.backend
    )
    dbias = _reduce_to(ds, bias) if need_ds else None
    return dq, dk, dv, None, dbias, None, None


_attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


def _validate_qkv(q, k, v, index, bias, check_index):
    q = _checks.check_float("q", q, 4)
    k = _checks.check_float("k", k, 4)
    v = _checks.check_float("v", v, 4)
    b, h, n, d = q.shape
    if k.shape[0] != b or k.shape[1] != h or k.shape[3] != d:
        raise ValueError(f"k has shape {tuple(k.shape)}; expected ({b}, {h}, M, {d}) to match q {tuple(q.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected the shape of k {tuple(k.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but q has {q.dtype}; use one dtype")
    _checks.check_same_device(("q", q), ("k", k), ("v", v), ("index", index), ("bias", bias))
    _checks.check_index(
        "index", index, batch=b, heads=h, rows=n, num_keys=k.shape[2], check_values=check_index
    )
    if bias is not None:
        _checks.check_bias(bias, (b, h, n, index.shape[-1]))
    return d


def gather_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    *,
    scale: float | None = None,
    bias: Tensor | None = None,
    backend: str | None = None,
    check_index: bool = True,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-query softmax attention over an explicit key list (the SMM of IET, fused).

    Args:
        q: (B, H, N, D) float16 / bfloat16 / float32 / float64.
        k, v: (B, H, M, D), same dtype and device as q.
        index: integer (B, Hi, N, K), Hi in {1, H} (Hi = 1 shares one list across heads); values in
            [0, M) or -1 for an empty slot. Duplicates count as separate slots.
        scale: logits scale, default D**-0.5.
        bias: optional additive logits bias broadcastable to (B, H, N, K) (e.g. a log-prior or a
            relative-position bias); -inf excludes a slot. Differentiable.
        backend: "triton" | "torch" | None (see :mod:`sr_kernels._dispatch`).
        check_index: validate index values with one reduction and one host sync (default True);
            pass False for trusted lists (an out-of-range value then reads out of bounds on Triton).
        return_lse: also return the per-row logsumexp (B, H, N) float32 (-inf for empty rows),
            differentiable; ``exp(gather_scores(...) - lse)`` is the attention map.

    Returns:
        out (B, H, N, D) in q's dtype: out_i = sum_c softmax_c(scale q_i.k_j + bias_ic) v_j over the
        non-empty slots, zeros for a row without any valid slot. With ``return_lse``: (out, lse).
    """
    d = _validate_qkv(q, k, v, index, bias, check_index)
    scale = _checks.resolve_scale(scale, d)
    be = resolve_backend(backend, q.device)
    _maybe_register_flops()
    out, lse = torch.ops.sr_kernels.gather_attention_fwd(q, k, v, index, bias, scale, be)
    return (out, lse) if return_lse else out


# ----------------------------------------------------------------------------------------------
# gather_scores
# ----------------------------------------------------------------------------------------------


def _scores_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.custom_op(
    "sr_kernels::gather_scores_fwd",
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor index, Tensor? bias, float scale, str backend) -> Tensor",
)
def _scores_fwd(q: Tensor, k: Tensor, index: Tensor, bias: Tensor | None, scale: float, backend: str) -> Tensor:
    if _use_triton(backend, q, k):
        from .triton_fwd import sddmm

        return sddmm(q, k, index, scale, bias, empty_neg_inf=True, out_dtype=torch.float32)
    return torch_fast.scores_forward(q, k, index, scale, bias).to(_scores_dtype(q)).contiguous()


@_scores_fwd.register_fake
def _(q, k, index, bias, scale, backend):
    b, h, n, _ = q.shape
    return q.new_empty((b, h, n, index.shape[-1]), dtype=_scores_dtype(q))


@torch.library.custom_op(
    "sr_kernels::gather_scores_bwd",
    mutates_args=(),
    schema="(Tensor grad, Tensor q, Tensor k, Tensor index, float scale, str backend) -> (Tensor, Tensor)",
)
def _scores_bwd(grad: Tensor, q: Tensor, k: Tensor, index: Tensor, scale: float, backend: str) -> tuple[Tensor, Tensor]:
    if _use_triton(backend, q, k):
        from .triton_bwd import scatter_rows
        from .triton_fwd import spmm

        g = grad.masked_fill(index < 0, 0.0)
        dq = spmm(g, k, index, scale, out_dtype=q.dtype)
        dk = scatter_rows(g, q, index, k.shape[2], scale, k.dtype)
        return dq, dk
    return torch_fast.scores_backward(grad, q, k, index, scale)


@_scores_bwd.register_fake
def _(grad, q, k, index, scale, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _scores_setup(ctx, inputs, output):
    q, k, index, bias, scale, backend = inputs
    ctx.save_for_backward(q, k, index, bias)
    ctx.scale, ctx.backend = scale, backend


def _scores_backward(ctx, grad):
    q, k, index, bias = ctx.saved_tensors
    dq = dk = dbias = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        dq, dk = torch.ops.sr_kernels.gather_scores_bwd(grad, q, k, index, ctx.scale, ctx.backend)
    if bias is not None and ctx.needs_input_grad[3]:
        dbias = _reduce_to(grad.masked_fill(index < 0, 0.0), bias)
    return dq, dk, None, dbias, None, None


_scores_fwd.register_autograd(_scores_backward, setup_context=_scores_setup)


def gather_scores(
    q: Tensor,
    k: Tensor,
    index: Tensor,
    *,
    scale: float | None = None,
    bias: Tensor | None = None,
    backend: str | None = None,
    check_index: bool = True,
) -> Tensor:
    """Logits of gather attention: s_ic = scale q_i . k[index_ic] + bias_ic, -inf at empty slots.

    Shapes as in :func:`gather_attention`. Returns (B, H, N, K) float32 (float64 for float64 inputs),
    whatever the input dtype, because softmax, top-k selection and expansion read it. Differentiable
    in q, k and bias.
    """
    q = _checks.check_float("q", q, 4)
    k = _checks.check_float("k", k, 4)
    b, h, n, d = q.shape
    if k.shape[0] != b or k.shape[1] != h or k.shape[3] != d:
        raise ValueError(f"k has shape {tuple(k.shape)}; expected ({b}, {h}, M, {d}) to match q {tuple(q.shape)}")
    if k.dtype != q.dtype:
        raise ValueError(f"k has dtype {k.dtype} but q has {q.dtype}; use one dtype")
    _checks.check_same_device(("q", q), ("k", k), ("index", index), ("bias", bias))
    _checks.check_index("index", index, batch=b, heads=h, rows=n, num_keys=k.shape[2], check_values=check_index)
    if bias is not None:
        _checks.check_bias(bias, (b, h, n, index.shape[-1]))
    scale = _checks.resolve_scale(scale, d)
    be = resolve_backend(backend, q.device)
    _maybe_register_flops()
    return torch.ops.sr_kernels.gather_scores_fwd(q, k, index, bias, scale, be)


# ----------------------------------------------------------------------------------------------
# gather_values
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op(
    "sr_kernels::gather_values_fwd",
    mutates_args=(),
    schema="(Tensor p, Tensor v, Tensor index, str backend) -> Tensor",
)
def _values_fwd(p: Tensor, v: Tensor, index: Tensor, backend: str) -> Tensor:
    if _use_triton(backend, p, v):
        from .triton_fwd import spmm

        return spmm(p, v, index, 1.0, out_dtype=v.dtype)
    return torch_fast.values_forward(p, v, index).contiguous()


@_values_fwd.register_fake
def _(p, v, index, backend):
    b, h, n, _ = p.shape
    return v.new_empty((b, h, n, v.shape[-1]))


@torch.library.custom_op(
    "sr_kernels::gather_values_bwd",
    mutates_args=(),
    schema="(Tensor grad, Tensor p, Tensor v, Tensor index, str backend) -> (Tensor, Tensor)",
)
def _values_bwd(grad: Tensor, p: Tensor, v: Tensor, index: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    if _use_triton(backend, p, v):
        from .triton_bwd import scatter_rows
        from .triton_fwd import sddmm

        g = grad.contiguous()
        dp = sddmm(g, v, index, 1.0, None, empty_neg_inf=False, out_dtype=p.dtype)
        dv = scatter_rows(p, g, index, v.shape[2], 1.0, v.dtype)
        return dp, dv
    return torch_fast.values_backward(grad, p, v, index)


@_values_bwd.register_fake
def _(grad, p, v, index, backend):
    return p.new_empty(p.shape), v.new_empty(v.shape)


def _values_setup(ctx, inputs, output):
    p, v, index, backend = inputs
    ctx.save_for_backward(p, v, index)
    ctx.backend = backend


def _values_backward(ctx, grad):
    p, v, index = ctx.saved_tensors
    dp, dv = torch.ops.sr_kernels.gather_values_bwd(grad, p, v, index, ctx.backend)
    return dp, dv, None, None


_values_fwd.register_autograd(_values_backward, setup_context=_values_setup)


def gather_values(
    p: Tensor,
    v: Tensor,
    index: Tensor,
    *,
    backend: str | None = None,
    check_index: bool = True,
) -> Tensor:
    """out_i = sum_c p_ic v[index_ic] over the non-empty slots (the AV half of gather attention).

    Args:
        p: (B, H, N, K) float weights (e.g. a softmax of :func:`gather_scores`); values at empty slots
            are ignored.
        v: (B, H, M, D) float.
        index: integer (B, Hi, N, K), Hi in {1, H}, values in [0, M) or -1.

    Returns (B, H, N, D) in v's dtype (fp32 accumulation). Differentiable in p and v.
    """
    p = _checks.check_float("p", p, 4)
    v = _checks.check_float("v", v, 4)
    b, h, n, kk = p.shape
    if v.shape[0] != b or v.shape[1] != h:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected ({b}, {h}, M, D) to match p {tuple(p.shape)}")
    _checks.check_same_device(("p", p), ("v", v), ("index", index))
    _checks.check_index("index", index, batch=b, heads=h, rows=n, num_keys=v.shape[2], check_values=check_index, keys_name="v")
    if index.shape[-1] != kk:
        raise ValueError(f"index has K = {index.shape[-1]} slots but p has {kk}")
    be = resolve_backend(backend, v.device)
    _maybe_register_flops()
    return torch.ops.sr_kernels.gather_values_fwd(p, v, index, be)


# ----------------------------------------------------------------------------------------------
# FLOP formulas for torch.utils.flop_counter.FlopCounterMode (shapes in, FLOPs out)
# ----------------------------------------------------------------------------------------------


_FLOPS_REGISTERED = False


def register_flop_formulas() -> None:
    """Register the FLOP formulas of the sr_kernels:: ops with FlopCounterMode (idempotent).

    Runs at package import on CUDA machines, when Triton is already imported or TRITON_INTERPRET is
    set. On a CPU-only machine without TRITON_INTERPRET it is deferred to the first op call, because
    ``torch.utils.flop_counter`` imports Triton (torch >= 2.14) and Triton must not be imported before
    a script may still set TRITON_INTERPRET=1; there, call ``sr_kernels.flops.register_flop_formulas()``
    before creating a FlopCounterMode that should see ops not yet called (the mode copies the registry
    when it is created).
    """
    global _FLOPS_REGISTERED
    if _FLOPS_REGISTERED:
        return
    _FLOPS_REGISTERED = True
    from torch.utils.flop_counter import register_flop_formula

    from .. import flops

    def _bhnkd(q_shape, index_shape):
        b, h, n, d = q_shape
        return b, h, n, index_shape[-1], d

    @register_flop_formula(torch.ops.sr_kernels.gather_attention_fwd)
    def _attn_fwd(q_shape, k_shape, v_shape, index_shape, *args, **kwargs) -> int:
        return flops.gather_attention_flops(*_bhnkd(q_shape, index_shape))

    @register_flop_formula(torch.ops.sr_kernels.gather_attention_bwd)
    def _attn_bwd(grad_shape, grad_lse_shape, q_shape, k_shape, v_shape, index_shape, *args, **kwargs) -> int:
        return flops.gather_attention_backward_flops(*_bhnkd(q_shape, index_shape))

    @register_flop_formula(torch.ops.sr_kernels.gather_scores_fwd)
    def _scores_fwd(q_shape, k_shape, index_shape, *args, **kwargs) -> int:
        return flops.gather_scores_flops(*_bhnkd(q_shape, index_shape))

    @register_flop_formula(torch.ops.sr_kernels.gather_scores_bwd)
    def _scores_bwd(grad_shape, q_shape, k_shape, index_shape, *args, **kwargs) -> int:
        return flops.gather_scores_backward_flops(*_bhnkd(q_shape, index_shape))

    @register_flop_formula(torch.ops.sr_kernels.gather_values_fwd)
    def _values_fwd(p_shape, v_shape, index_shape, *args, **kwargs) -> int:
        b, h, n, kk = p_shape
        return flops.gather_values_flops(b, h, n, kk, v_shape[-1])

    @register_flop_formula(torch.ops.sr_kernels.gather_values_bwd)
    def _values_bwd(grad_shape, p_shape, v_shape, index_shape, *args, **kwargs) -> int:
        b, h, n, kk = p_shape
        return flops.gather_values_backward_flops(b, h, n, kk, v_shape[-1])



def _maybe_register_flops() -> None:
    if not _FLOPS_REGISTERED:
        register_flop_formulas()


def _safe_to_import_triton_now() -> bool:
    """Importing torch.utils.flop_counter imports Triton (torch >= 2.14). That is harmless unless this
    is a CPU process that may still set TRITON_INTERPRET=1 before its first Triton call."""
    if "triton" in sys.modules or "torch.utils.flop_counter" in sys.modules:
        return True
    if interpreter_enabled() or not triton_available():
        return True
    return torch.cuda.is_available()


# Register now when that cannot spoil a later TRITON_INTERPRET=1; otherwise at the first op call.
if _safe_to_import_triton_now():
    register_flop_formulas()
