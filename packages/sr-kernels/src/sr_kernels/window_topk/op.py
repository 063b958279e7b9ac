"""Query-aware top-k window attention (SSCAN's FGCA): window selection, window gather, attention.

The attention of every query window is restricted to the tokens of the k key windows that match it
best, and those k windows are chosen per query window from pooled features:

1. :func:`window_topk_select` - **the selection rule (our reading of the paper, whose text we only
   have as a summary: "selects the top-k windows based on query-key similarity")**: every window is
   summarised by the mean of its tokens' q (resp. k) vectors, and window j is scored for query
   window i by the dot product ``s[i, j] = mean_t q[i, t] . mean_t k[j, t]`` - the region-level
   routing of BiFormer's BRA, which the paper compares against. ``shared_heads=True`` (default)
   sums the score over heads (one selection per image, as BRA), ``False`` selects per head. The k
   ids with the highest scores are returned best first, ties to the lower window id.
   ``include_self=True`` (not the default reading) always lists the query window's own window first.
   The selection is not differentiable (ids are integers), as in BRA.
2. :func:`window_gather` - the listed key (or value) windows concatenated into one dense
   (k * window_tokens) block per query window: one ``index_select`` of rows, differentiable.
3. :func:`window_topk_attention` - softmax attention of each query window over its gathered block,
   computed by ``torch.nn.functional.scaled_dot_product_attention`` (``impl="sdpa"``: FlashAttention /
   memory-efficient / cuDNN kernels on CUDA, the tiled flash kernel on CPU), so the
   (window_tokens x k*window_tokens) logits are never written to memory. ``impl="math"`` materialises
   them (the BRA way; :func:`sr_kernels.window_topk.reference.gathered_attention_explicit`).

This is a plain PyTorch implementation: SDPA does the heavy work, there is no Triton kernel. Memory:
the pooled score map is (nQ x nK) windows, computed in row chunks of at most
:data:`SCORE_CHUNK_ELEMENTS` entries (never an (N, nK) token-to-window map, never N x N); the
gathered K and V blocks are (B, H, nQ, k*Tk, D) each, i.e. O(N k D) for N = nQ*T query tokens (the
logits, O(N k Tk) per head, exist only inside the SDPA kernel's tiles with ``impl="sdpa"``).

FLOPs: the selection runs as the custom op ``sr_kernels::window_topk_fwd`` whose formula
(:func:`sr_kernels.flops.window_topk_select_flops`) is registered with FlopCounterMode; the gather
is data movement (0 FLOPs) and the SDPA call is counted by torch's own formula (forward
``4 B H nQ T (k Tk) D``, :func:`sr_kernels.flops.window_topk_attention_flops`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .. import _checks
from . import reference as ref

Tensor = torch.Tensor

IMPLS: tuple[str, ...] = ("sdpa", "math")
SCORE_CHUNK_ELEMENTS = 1 << 24  # pooled-score entries (B * Hs * rows * nK) held at once by the selection
_SDPA_MAX_BATCH_HEADS = 32768  # CUDA attention kernels put batch and heads on grid axes limited to 65535


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _check_windows(name: str, x: object) -> Tensor:
    """A float (B, H, nW, T, D) windowed tensor with every dimension non-empty."""
    x = _checks.check_float(name, x, 5)
    if x.numel() == 0:
        raise ValueError(f"{name} has an empty dimension: shape {tuple(x.shape)}")
    return x


def _check_qk(q: Tensor, k: Tensor) -> None:
    b, h, _, _, d = q.shape
    if k.shape[0] != b or k.shape[1] != h or k.shape[4] != d:
        raise ValueError(
            f"k has shape {tuple(k.shape)}; expected ({b}, {h}, nK, Tk, {d}) to match q {tuple(q.shape)}"
        )
    if k.dtype != q.dtype:
        raise ValueError(f"k has dtype {k.dtype} but q has {q.dtype}; use one dtype")
    _checks.check_same_device(("q", q), ("k", k))


def check_window_ids(
    ids: object, *, batch: int, heads: int, query_windows: int, key_windows: int, check_values: bool
) -> Tensor:
    """Window ids (B, 1 or H, nQ, k >= 1), integer, values in [0, nK) (no empty slots).

    The value check costs one reduction and one host sync (skipped with ``check_values=False`` and on
    meta tensors).
    """
    ids = _checks.check_tensor("ids", ids)
    if ids.dtype not in _checks.INDEX_DTYPES:
        raise ValueError(f"ids must have an integer dtype (int64 preferred), got {ids.dtype}")
    if ids.dim() != 4:
        raise ValueError(f"ids must have 4 dimensions (B, Hi, nQ, k), got shape {tuple(ids.shape)}")
    b, hi, nq, kk = ids.shape
    if b != batch or nq != query_windows or hi not in (1, heads):
        raise ValueError(f"ids has shape {tuple(ids.shape)}; expected ({batch}, 1 or {heads}, {query_windows}, k)")
    if kk == 0:
        raise ValueError("ids has k = 0 windows per query window; k must be at least 1")
    if check_values and ids.device.type != "meta":
        lo, hi_v = (int(t) for t in torch.aminmax(ids))  # one host sync for both
        if lo < 0:
            raise ValueError(f"ids has value {lo} < 0 (window ids must be in [0, {key_windows}); no empty slots)")
        if hi_v >= key_windows:
            raise ValueError(f"ids has value {hi_v} >= {key_windows}, the number of key windows (dim 2 of k)")
    return ids


# ----------------------------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------------------------


def _no_autocast(device: torch.device):
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _topk_chunked(qp: Tensor, kp: Tensor, topk: int, include_self: bool) -> Tensor:
    """Top-k key windows per query window from pooled features, in row chunks (the fast path).

    qp: (B, Hs, nQ, C); kp: (B, Hs, nK, C), float32 or float64. Returns int64 (B, Hs, nQ, topk).
    """
    b, hs, nq, _ = qp.shape
    nk = kp.shape[2]
    rows = max(1, SCORE_CHUNK_ELEMENTS // max(1, b * hs * nk))
    out = torch.empty((b, hs, nq, topk), dtype=torch.int64, device=qp.device)
    kt = kp.transpose(-2, -1)
    for start in range(0, nq, rows):
        stop = min(nq, start + rows)
        with _no_autocast(qp.device):  # the scores stay in the pooled dtype under an outer autocast
            scores = qp[:, :, start:stop] @ kt  # (B, Hs, r, nK)
        if include_self:
            r = torch.arange(stop - start, device=qp.device)
            scores[:, :, r, start + r] = float("inf")
        # a stable descending sort: equal scores keep ascending window order (ties to the lower id)
        out[:, :, start:stop] = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :topk]
    return out


@torch.library.custom_op(
    "sr_kernels::window_topk_fwd",
    mutates_args=(),
    schema="(Tensor q_pooled, Tensor k_pooled, int topk, bool include_self) -> Tensor",
)
def _window_topk_fwd(q_pooled: Tensor, k_pooled: Tensor, topk: int, include_self: bool) -> Tensor:
    return _topk_chunked(q_pooled, k_pooled, topk, include_self)


@_window_topk_fwd.register_fake
def _(q_pooled, k_pooled, topk, include_self):
    b, hs, nq, _ = q_pooled.shape
    return q_pooled.new_empty((b, hs, nq, topk), dtype=torch.int64)


def pool_windows(x: Tensor, shared_heads: bool) -> Tensor:
    """Mean over the tokens of every window: (B, H, nW, T, D) -> (B, H, nW, D), or (B, 1, nW, H*D)
    with ``shared_heads``. Accumulates and returns float32 for 16-bit inputs (float64 stays)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    pooled = x.mean(dim=3, dtype=dtype)  # (B, H, nW, D)
    if not shared_heads:
        return pooled
    b, h, n, d = pooled.shape
    return pooled.permute(0, 2, 1, 3).reshape(b, 1, n, h * d)


def window_topk_select(
    q: Tensor,
    k: Tensor,
    topk: int,
    *,
    shared_heads: bool = True,
    include_self: bool = False,
) -> Tensor:
    """Ids of the ``topk`` key windows with the highest pooled query-key score, per query window.

    Args:
        q: (B, H, nQ, T, D) float, the queries grouped by window (tokens row-major in a window).
        k: (B, H, nK, Tk, D) float, the keys grouped by window; same B, H, D, dtype and device.
        topk: how many windows to keep, 1 <= topk <= nK.
        shared_heads: score over all heads together (default; BRA's routing) or per head.
        include_self: list the query window's own window first (needs nQ == nK), then the best others.

    The score is ``mean_t q[i, t] . mean_t k[j, t]`` (float32 for 16-bit inputs, float64 for float64);
    ids are sorted by descending score, ties to the lower id. Not differentiable (the inputs are
    detached). Returns int64 (B, 1, nQ, topk) with ``shared_heads``, else (B, H, nQ, topk).
    """
    q = _check_windows("q", q)
    k = _check_windows("k", k)
    _check_qk(q, k)
    nq, nk = q.shape[2], k.shape[2]
    topk = _checks.check_positive_int("topk", topk)
    if topk > nk:
        raise ValueError(f"topk ({topk}) exceeds the number of key windows ({nk})")
    if include_self and nq != nk:
        raise ValueError(f"include_self needs as many query as key windows, got nQ={nq}, nK={nk}")
    _maybe_register_flops()
    qp = pool_windows(q.detach(), shared_heads)
    kp = pool_windows(k.detach(), shared_heads)
    return torch.ops.sr_kernels.window_topk_fwd(qp, kp, topk, bool(include_self))


# ----------------------------------------------------------------------------------------------
# gather and attention
# ----------------------------------------------------------------------------------------------


def window_gather(x: Tensor, ids: Tensor, *, check_ids: bool = True) -> Tensor:
    """The windows listed in ``ids``, concatenated per query window into one dense block.

    Args:
        x: (B, H, nK, T, D) float (keys or values grouped by window).
        ids: integer (B, Hi, nQ, k), Hi in {1, H} (Hi = 1: one list for all heads), values in [0, nK).
        check_ids: validate the values (one host sync).

    Returns (B, H, nQ, k*T, D) in x's dtype: block i holds the T tokens of window ids[.., i, 0], then
    those of ids[.., i, 1], ... (a repeated id repeats its tokens). Differentiable in x (the backward
    is an ``index_add``). Memory: the output only, B*H*nQ*k*T*D elements.
    """
    x = _check_windows("x", x)
    b, h, nk, t, d = x.shape
    ids = _checks.check_tensor("ids", ids)
    ids = check_window_ids(
        ids, batch=b, heads=h, query_windows=ids.shape[2] if ids.dim() == 4 else -1,
        key_windows=nk, check_values=check_ids,
    )
    _checks.check_same_device(("x", x), ("ids", ids))
    nq, kk = ids.shape[2], ids.shape[3]
    base = (torch.arange(b, device=x.device).view(b, 1) * h + torch.arange(h, device=x.device).view(1, h)) * nk
    rows = (base.view(b, h, 1, 1) + ids.long()).reshape(-1)  # Hi = 1 broadcasts over heads here
    picked = x.reshape(b * h * nk, t * d).index_select(0, rows)
    return picked.view(b, h, nq, kk * t, d)


def _pad_last_dim(x: Tensor, multiple: int) -> Tensor:
    pad = (-x.shape[-1]) % multiple
    return F.pad(x, (0, pad)) if pad else x


def _sdpa(q: Tensor, k_sel: Tensor, v_sel: Tensor, scale: float) -> Tensor:
    """SDPA over (B, H, nQ, T, D) queries and (B, H, nQ, K, D) gathered blocks -> (B, H, nQ, T, D)."""
    b, h, nq, t, d = q.shape
    kk = k_sel.shape[3]
    q4 = q.reshape(b, h * nq, t, d)
    k4 = k_sel.reshape(b, h * nq, kk, d)
    v4 = v_sel.reshape(b, h * nq, kk, d)
    if q.is_cuda:
        # flash / memory-efficient kernels want a head dim aligned to 8 (zero columns change no logit;
        # the extra output columns are dropped), else SDPA falls back to the math kernel
        q4, k4, v4 = (_pad_last_dim(z, 8) for z in (q4, k4, v4))
    if q.is_cuda and h * nq > _SDPA_MAX_BATCH_HEADS:
        step = _SDPA_MAX_BATCH_HEADS
        out = torch.cat(
            [
                F.scaled_dot_product_attention(q4[:, s : s + step], k4[:, s : s + step], v4[:, s : s + step], scale=scale)
                for s in range(0, h * nq, step)
            ],
            dim=1,
        )
    else:
        out = F.scaled_dot_product_attention(q4, k4, v4, scale=scale)
    return out[..., :d].reshape(b, h, nq, t, d)


def window_topk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    ids: Tensor,
    *,
    scale: float | None = None,
    impl: str = "sdpa",
    check_ids: bool = True,
) -> Tensor:
    """Every query window attends to the tokens of its listed key windows (FGCA's attention).

    Args:
        q: (B, H, nQ, T, D) float queries grouped by window.
        k, v: (B, H, nK, Tk, D) float keys and values grouped by window (same dtype/device as q).
        ids: integer (B, Hi, nQ, k), Hi in {1, H}: the key windows of every query window (e.g. from
            :func:`window_topk_select`); a window listed twice counts twice.
        scale: logits scale, default D**-0.5.
        impl: "sdpa" (default; torch SDPA, the logits are never materialised) or "math" (explicit
            logits and softmax, BRA's way; for comparison and tests).
        check_ids: validate the id values (one host sync).

    Returns (B, H, nQ, T, D) in q's dtype: ``out[i, t] = sum_j softmax_j(scale q[i, t] . k_j) v_j`` over
    the k*Tk gathered key tokens j of window i. Differentiable in q, k and v.
    """
    q = _check_windows("q", q)
    k = _check_windows("k", k)
    v = _check_windows("v", v)
    _check_qk(q, k)
    if v.shape != k.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}; expected the shape of k {tuple(k.shape)}")
    if v.dtype != q.dtype:
        raise ValueError(f"v has dtype {v.dtype} but q has {q.dtype}; use one dtype")
    _checks.check_same_device(("q", q), ("v", v), ("ids", ids))
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    b, h, nq, _, d = q.shape
    check_window_ids(ids, batch=b, heads=h, query_windows=nq, key_windows=k.shape[2], check_values=check_ids)
    scale = _checks.resolve_scale(scale, d)
    k_sel = window_gather(k, ids, check_ids=False)
    v_sel = window_gather(v, ids, check_ids=False)
    if impl == "math":
        return ref.gathered_attention_explicit(q, k_sel, v_sel, scale)
    return _sdpa(q, k_sel, v_sel, scale)


# ----------------------------------------------------------------------------------------------
# FLOP formula for torch.utils.flop_counter.FlopCounterMode
# ----------------------------------------------------------------------------------------------


_FLOPS_REGISTERED = False


def register_flop_formulas() -> None:
    """Register the selection op's FLOP formula with FlopCounterMode (idempotent). Same timing rules
    as :func:`sr_kernels.gather_attention.op.register_flop_formulas`."""
    global _FLOPS_REGISTERED
    if _FLOPS_REGISTERED:
        return
    _FLOPS_REGISTERED = True
    from torch.utils.flop_counter import register_flop_formula

    from .. import flops

    @register_flop_formula(torch.ops.sr_kernels.window_topk_fwd)
    def _select(q_shape, k_shape, *args, **kwargs) -> int:
        b, hs, nq, c = q_shape
        return flops.window_topk_select_flops(b, hs, nq, k_shape[2], c)


def _maybe_register_flops() -> None:
    if not _FLOPS_REGISTERED:
        register_flop_formulas()


def _register_now_if_safe() -> None:
    from ..gather_attention.op import _safe_to_import_triton_now

    if _safe_to_import_triton_now():
        register_flop_formulas()


_register_now_if_safe()
