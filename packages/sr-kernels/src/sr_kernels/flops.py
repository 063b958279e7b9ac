"""FLOP formulas of the sparse ops (plain functions; also registered with FlopCounterMode).

Convention (the one ``torch.utils.flop_counter`` uses for matmuls and SDPA): a multiply-add is 2 FLOPs;
softmax, masking and the recomputation of the logits in the backward pass are not counted. The count is
the work the op is asked to do over all K slots of every row (the kernels iterate over empty slots too,
masked), independent of how many slots are empty:

* gather attention forward: QK (2 B H N K D) + PV (2 B H N K D) = 4 B H N K D;
  backward: dP = dO V^T, dQ = dS K, dK = dS^T Q, dV = P^T dO = 8 B H N K D
  (exactly as torch counts dense SDPA with M = K keys per query, so the two compare directly);
* gather_scores / gather_values: 2 B H N K D forward, 4 B H N K D backward each;
* iea_attention forward: QK over the K slots (2 B H N K D) + PV over the slots the output uses
  (K, or keep with av_on_selected): 2 B H N K_av D; backward: dq, dk (4 B H N K D) + dp, dv (4 B H N K_av D);
  the selection (a sort) is integer work and not counted;
* topk_select, expand_two_hop and dlsg_index do comparisons and integer work only: 0 FLOPs;
* window_topk_select: the pooled window score map, 2 B Hs nQ nK C (Hs = 1 and C = H D with shared
  heads; the token means and the sort are not counted); window_gather moves data: 0 FLOPs;
  window_topk_attention runs torch SDPA, which FlopCounterMode counts itself: forward
  4 B H nQ T (k Tk) D, the same convention as gather attention with K = k Tk keys per query.
"""

from __future__ import annotations


def gather_attention_flops(batch: int, heads: int, rows: int, slots: int, head_dim: int) -> int:
    """Forward FLOPs of gather_attention for q (B,H,N,D) and index (B,Hi,N,K)."""
    return 4 * batch * heads * rows * slots * head_dim


def gather_attention_backward_flops(batch: int, heads: int, rows: int, slots: int, head_dim: int) -> int:
    """Backward FLOPs of gather_attention (dq, dk, dv; logits recompute not counted)."""
    return 8 * batch * heads * rows * slots * head_dim


def gather_scores_flops(batch: int, heads: int, rows: int, slots: int, head_dim: int) -> int:
    """Forward FLOPs of gather_scores (one multiply-add per slot and channel)."""
    return 2 * batch * heads * rows * slots * head_dim


def gather_scores_backward_flops(batch: int, heads: int, rows: int, slots: int, head_dim: int) -> int:
    """Backward FLOPs of gather_scores (dq and dk)."""
    return 4 * batch * heads * rows * slots * head_dim


def gather_values_flops(batch: int, heads: int, rows: int, slots: int, head_dim: int) -> int:
    """Forward FLOPs of gather_values."""
    return 2 * batch * heads * rows * slots * head_dim


def gather_values_backward_flops(batch: int, heads: int, rows: int, slots: int, head_dim: int) -> int:
    """Backward FLOPs of gather_values (dp and dv)."""
    return 4 * batch * heads * rows * slots * head_dim


def iea_attention_flops(batch: int, heads: int, rows: int, slots: int, head_dim: int, av_slots: int) -> int:
    """Forward FLOPs of iea_attention: QK over ``slots`` (K) plus PV over ``av_slots`` (K or keep)."""
    return 2 * batch * heads * rows * (slots + av_slots) * head_dim


def iea_attention_backward_flops(
    batch: int, heads: int, rows: int, slots: int, head_dim: int, av_slots: int
) -> int:
    """Backward FLOPs of iea_attention (dq, dk over K slots; dp, dv over ``av_slots``)."""
    return 4 * batch * heads * rows * (slots + av_slots) * head_dim


def gather_attention_bytes(
    batch: int, heads: int, rows: int, slots: int, head_dim: int, *,
    elem_bytes: int = 2, index_bytes: int = 8, index_heads: int | None = None,
) -> int:
    """Bytes a gather-attention forward must move at least once per slot (the benchmark's GB/s basis).

    q read + out write (2 N D), one K and one V row gathered per slot (2 N K D), the index list
    (N K per index head) and the fp32 lse (N).
    """
    ih = heads if index_heads is None else index_heads
    qkvo = batch * heads * rows * (2 * head_dim + 2 * slots * head_dim) * elem_bytes
    return qkvo + batch * ih * rows * slots * index_bytes + batch * heads * rows * 4


def window_topk_select_flops(
    batch: int, score_heads: int, query_windows: int, key_windows: int, channels: int
) -> int:
    """FLOPs of window_topk_select: one dot product of pooled features per (query, key) window pair."""
    return 2 * batch * score_heads * query_windows * key_windows * channels


def window_topk_attention_flops(
    batch: int, heads: int, query_windows: int, window_tokens: int, selected_windows: int,
    key_window_tokens: int, head_dim: int,
) -> int:
    """Forward FLOPs of window_topk_attention (QK^T and PV over the k * Tk gathered keys), as torch
    counts the SDPA call it makes."""
    keys = selected_windows * key_window_tokens
    return 4 * batch * heads * query_windows * window_tokens * keys * head_dim


def register_flop_formulas() -> None:
    """Make FlopCounterMode count the sr_kernels:: custom ops with the formulas above (idempotent).

    Usually automatic (at import, or at the first op call on CPU-only machines without
    TRITON_INTERPRET); call it before creating a FlopCounterMode in the latter case.
    """
    from .gather_attention.op import register_flop_formulas as _register
    from .iea_attention.op import register_flop_formulas as _register_iea
    from .window_topk.op import register_flop_formulas as _register_window_topk

    _register()
    _register_iea()
    _register_window_topk()
