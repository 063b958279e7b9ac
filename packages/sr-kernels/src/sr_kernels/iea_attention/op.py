"""``sr_kernels.iea_attention``: one IEA layer's sparse attention, selection and AV as one op.

Custom ops ``sr_kernels::iea_attention_fwd`` / ``sr_kernels::iea_attention_bwd`` (torch.library, schemas
written out), autograd through them, FLOP formulas for FlopCounterMode (see :mod:`sr_kernels.flops`).
Backends: Triton (CUDA, or the interpreter) runs the fused kernels of :mod:`.triton_fwd` /
:mod:`.triton_bwd` when K <= 1024 and the inputs are not float64; everything else runs
:mod:`.torch_path`. :mod:`.reference` is the readable oracle (the unfused composition).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from .. import _checks
from .._dispatch import resolve_backend
from ..gather_attention.op import _reduce_to, _safe_to_import_triton_now, _validate_qkv
from ..gather_attention.reference import compute_dtype
from . import _launch as L
from . import torch_path
from .union import TileUnion

Tensor = torch.Tensor
DETERMINISTIC_ENV = "SR_KERNELS_DETERMINISTIC"


class IEAOutput(NamedTuple):
    """What :func:`iea_attention` returns (see there for shapes)."""

    out: Tensor
    lse: Tensor
    kept_index: Tensor
    kept_logp: Tensor
    kept_slot: Tensor | None


def _fused(backend: str, q: Tensor, num_slots: int) -> bool:
    return backend == "triton" and q.dtype != torch.float64 and num_slots <= L.MAX_FUSED_SLOTS


@torch.library.custom_op(
    "sr_kernels::iea_attention_fwd",
    mutates_args=(),
    schema="(Tensor q, Tensor k, Tensor v, Tensor index, Tensor? bias, Tensor? prior, float scale, int keep, "
    "bool on_selected, bool deterministic, str backend, Tensor[] plan) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _iea_fwd(
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, bias: Tensor | None, prior: Tensor | None,
    scale: float, keep: int, on_selected: bool, deterministic: bool, backend: str, plan: list[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if _fused(backend, q, index.shape[-1]):
        from .triton_fwd import iea_fwd

        out, lse, kidx, klogp, kslot = iea_fwd(q, k, v, index, bias, prior, scale, keep, on_selected, list(plan))
        return out, lse, kidx, klogp, kslot, lse.new_empty(0)
    out, lse, kidx, klogp, kslot, p = torch_path.forward(q, k, v, index, bias, prior, scale, keep, on_selected)
    return out.contiguous(), lse.contiguous(), kidx.contiguous(), klogp.contiguous(), kslot.contiguous(), p


@_iea_fwd.register_fake
def _(q, k, v, index, bias, prior, scale, keep, on_selected, deterministic, backend, plan):
    b, h, n, _ = q.shape
    ks = index.shape[-1]
    fused = _fused(backend, q, ks)
    fdt = torch.float32 if fused else compute_dtype(q, k, v, bias, prior)
    shape_k = (b, h, n, keep)
    aux = (0,) if fused else (b, h, n, ks)
    return (
        q.new_empty(q.shape), q.new_empty((b, h, n), dtype=fdt), index.new_empty(shape_k),
        q.new_empty(shape_k, dtype=fdt), index.new_empty(shape_k, dtype=torch.int64), q.new_empty(aux, dtype=fdt),
    )


@torch.library.custom_op(
    "sr_kernels::iea_attention_bwd",
    mutates_args=(),
    schema="(Tensor grad_out, Tensor? grad_lse, Tensor? grad_kept, Tensor q, Tensor k, Tensor v, Tensor index, "
    "Tensor? bias, Tensor? prior, Tensor out, Tensor lse, Tensor kept_index, Tensor kept_logp, Tensor kept_slot, "
    "Tensor aux, float scale, bool on_selected, bool need_ds, bool deterministic, str backend) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
)
def _iea_bwd(
    grad_out: Tensor, grad_lse: Tensor | None, grad_kept: Tensor | None, q: Tensor, k: Tensor, v: Tensor,
    index: Tensor, bias: Tensor | None, prior: Tensor | None, out: Tensor, lse: Tensor, kept_index: Tensor,
    kept_logp: Tensor, kept_slot: Tensor, aux: Tensor, scale: float, on_selected: bool, need_ds: bool,
    deterministic: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if _fused(backend, q, index.shape[-1]):
        from .triton_bwd import iea_bwd

        return iea_bwd(grad_out, grad_lse, grad_kept, q, k, v, index, bias, prior, out, lse, kept_slot,
                       scale, on_selected, need_ds, deterministic)
    dq, dk, dv, ds = torch_path.backward(grad_out, grad_lse, grad_kept, q, k, v, index, bias, prior, out,
                                         kept_index, kept_logp, kept_slot, aux, scale, on_selected)
    return dq, dk, dv, (ds if need_ds else ds.new_empty(0))


@_iea_bwd.register_fake
def _(grad_out, grad_lse, grad_kept, q, k, v, index, bias, prior, out, lse, kept_index, kept_logp, kept_slot,
      aux, scale, on_selected, need_ds, deterministic, backend):
    b, h, n, _ = q.shape
    ds_shape = (b, h, n, index.shape[-1]) if need_ds else (0,)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), lse.new_empty(ds_shape)


def _setup(ctx, inputs, output):
    q, k, v, index, bias, prior, scale, _keep, on_selected, deterministic, backend, plan = inputs
    out, lse, kidx, klogp, kslot, aux = output
    ctx.mark_non_differentiable(kidx, kslot, aux)
    ctx.set_materialize_grads(False)  # unused outputs (lse, the (B,H,N,K) aux) get no zero-filled grad
    ctx.save_for_backward(q, k, v, index, bias, prior, out, lse, kidx, klogp, kslot, aux)
    ctx.scale, ctx.on_selected, ctx.deterministic, ctx.backend = scale, on_selected, deterministic, backend
    ctx.plan_len = len(plan)


def _backward(ctx, grad_out, grad_lse, _g_idx, grad_kept, _g_slot, _g_aux):
    q, k, v, index, bias, prior, out, lse, kidx, klogp, kslot, aux = ctx.saved_tensors
    need_ds = (bias is not None and ctx.needs_input_grad[4]) or (prior is not None and ctx.needs_input_grad[5])
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, ds = torch.ops.sr_kernels.iea_attention_bwd(
        grad_out, grad_lse, grad_kept, q, k, v, index, bias, prior, out, lse, kidx, klogp, kslot, aux,
        ctx.scale, ctx.on_selected, need_ds, ctx.deterministic, ctx.backend,
    )
    dbias = _reduce_to(ds, bias) if bias is not None and ctx.needs_input_grad[4] else None
    dprior = _reduce_to(ds, prior) if prior is not None and ctx.needs_input_grad[5] else None
    return dq, dk, dv, None, dbias, dprior, None, None, None, None, None, [None] * ctx.plan_len


_iea_fwd.register_autograd(_backward, setup_context=_setup)


def _resolve_deterministic(deterministic: bool | None) -> bool:
    if deterministic is not None:
        if not isinstance(deterministic, bool):
            raise ValueError(f"deterministic must be True, False or None, got {deterministic!r}")
        return deterministic
    env = os.environ.get(DETERMINISTIC_ENV, "").strip().lower()
    if env:
        return env not in ("0", "false", "no")
    return torch.are_deterministic_algorithms_enabled()


def iea_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    *,
    keep: int,
    scale: float | None = None,
    bias: Tensor | None = None,
    prior: Tensor | None = None,
    av_on_selected: bool = False,
    return_slots: bool = False,
    tile_union: TileUnion | None = None,
    deterministic: bool | None = None,
    backend: str | None = None,
    check_index: bool = True,
) -> IEAOutput:
    """One IEA layer's attention (IET section 3.2): per-query softmax over an explicit candidate list,
    the AV product, and the top-``keep`` selection that becomes the next layer's list and prior.

    For query i with slots c and tokens j = index[i, c]:
    ``s_ic = scale q_i.k_j + bias_ic + prior_ic`` (-inf at empty slots), ``logp = log_softmax_c(s)``,
    ``out_i = sum_c P_ic v_j`` over all live slots, or over the kept ones only (``av_on_selected``, not
    renormalised), and the kept set: the ``keep`` live slots of highest logp, sorted best-first, ties to
    the lower slot (a slot is live when its index is >= 0 and its logit > -inf). Equal, up to float
    rounding, to the composition ``gather_scores -> log_softmax -> gather_values / topk_select``
    (:func:`sr_kernels.iea_attention.reference.iea_attention_reference`).

    Args:
        q: (B, H, N, D) float16 / bfloat16 / float32 / float64. k, v: (B, H, M, D), q's dtype.
        index: integer (B, Hi, N, K), Hi in {1, H}; values in [0, M) or -1 (empty slot). A duplicated
            token is two slots.
        keep: number of kept candidates per row (>= 1; keep > K pads with empty entries).
        scale: logits scale, default D**-0.5.
        bias, prior: optional float additive logits, each broadcastable to (B, H, N, K) (e.g. a
            relative-position bias gathered per slot, and the previous layer's kept log-probabilities);
            -inf excludes a slot. Both differentiable (their gradient is the same dL/ds, reduced to
            their shapes); two arguments only so that the caller needs no (B,H,N,K) sum.
        av_on_selected: the output uses only the kept slots (PFT's rule). With keep >= K it is the
            same as False.
        return_slots: also return the kept slot positions (e.g. to carry per-slot bias ids along).
        tile_union: a :class:`TileUnion` plan built from this ``index`` by
            :func:`sr_kernels.iea_tile_union`: the Triton path then runs the tensor-core tile-union
            kernel on the plan's eligible tiles (DLSG-like lists). Ignored by the torch path.
        deterministic: backward without fp32 atomics on dk / dv (bit-reproducible; see
            :mod:`.triton_bwd` for its cost). None: ``SR_KERNELS_DETERMINISTIC`` if set, else
            ``torch.are_deterministic_algorithms_enabled()``. The torch path is always deterministic.
        backend, check_index: as in :func:`sr_kernels.gather_attention`.

    Returns:
        :class:`IEAOutput` (out, lse, kept_index, kept_logp, kept_slot):
        out (B, H, N, D) in q's dtype; lse (B, H, N) float32 (float64 on the torch path for float64
        inputs), differentiable; kept_index (B, H, N, keep) in index's dtype (-1 past the live slots);
        kept_logp (B, H, N, keep) float32 (-inf past the live slots), differentiable (the progressive
        prior chain is not detached); kept_slot (B, H, N, keep) int64 (-1 past the live slots) when
        ``return_slots``, else None.
        A row without a live slot gives out = 0, lse = -inf, kept entries all empty, zero gradients.

    The Triton path writes no (B, H, N, K) tensor in the forward pass and saves only out and lse for the
    backward, which recomputes the logits.
    """
    d = _validate_qkv(q, k, v, index, None, check_index)
    b, h, n, _ = q.shape
    ks = index.shape[-1]
    if bias is not None:
        _checks.check_bias(bias, (b, h, n, ks))
    if prior is not None:
        _checks.check_bias(prior, (b, h, n, ks), name="prior")
    _checks.check_same_device(("q", q), ("bias", bias), ("prior", prior))
    keep = _checks.check_positive_int("keep", keep)
    for name, flag in (("av_on_selected", av_on_selected), ("return_slots", return_slots)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    scale = _checks.resolve_scale(scale, d)
    be = resolve_backend(backend, q.device)
    plan: list[Tensor] = []
    if tile_union is not None:
        if not isinstance(tile_union, TileUnion):
            raise ValueError(f"tile_union must be a TileUnion (sr_kernels.iea_tile_union), got {type(tile_union).__name__}")
        tile_union.check_matches(index)
        plan = tile_union.tensors() if _fused(be, q, ks) else []
    _maybe_register_flops()
    on_selected = av_on_selected and keep < ks
    out, lse, kidx, klogp, kslot, _aux = torch.ops.sr_kernels.iea_attention_fwd(
        q, k, v, index, bias, prior, scale, keep, on_selected, _resolve_deterministic(deterministic), be, plan
    )
    return IEAOutput(out, lse, kidx, klogp, kslot if return_slots else None)


# ----------------------------------------------------------------------------------------------
# FLOP formulas
# ----------------------------------------------------------------------------------------------

_FLOPS_REGISTERED = False


def register_flop_formulas() -> None:
    """Register the FLOP formulas of the iea_attention ops with FlopCounterMode (idempotent)."""
    global _FLOPS_REGISTERED
    if _FLOPS_REGISTERED:
        return
    _FLOPS_REGISTERED = True
    from torch.utils.flop_counter import register_flop_formula

    from .. import flops

    def _av_slots(ks: int, keep: int, on_selected: bool) -> int:
        return min(keep, ks) if on_selected else ks

    @register_flop_formula(torch.ops.sr_kernels.iea_attention_fwd)
    def _fwd(q_shape, k_shape, v_shape, index_shape, bias_shape, prior_shape, scale, keep, on_selected,
             *args, **kwargs) -> int:
        b, h, n, d = q_shape
        ks = index_shape[-1]
        return flops.iea_attention_flops(b, h, n, ks, d, _av_slots(ks, keep, on_selected))

    @register_flop_formula(torch.ops.sr_kernels.iea_attention_bwd)
    def _bwd(grad_shape, grad_lse_shape, grad_kept_shape, q_shape, k_shape, v_shape, index_shape, bias_shape,
             prior_shape, o_shape, lse_shape, kidx_shape, klogp_shape, kslot_shape, aux_shape, scale,
             on_selected, *args, **kwargs) -> int:
        b, h, n, d = q_shape
        ks = index_shape[-1]
        return flops.iea_attention_backward_flops(b, h, n, ks, d, _av_slots(ks, kidx_shape[-1], on_selected))


def _maybe_register_flops() -> None:
    if not _FLOPS_REGISTERED:
        register_flop_formulas()


if _safe_to_import_triton_now():
    register_flop_formulas()
