"""Top-k selection of slots (IET sparsification): the k best entries of every row, sorted.

A slot is *live* when its index is >= 0 and its score is > -inf (NaN counts as dead). Rows are sorted by
descending score, ties go to the lower slot, dead slots come last as (value -inf, index -1, slot -1);
k larger than K pads with dead entries. The values are gathered from ``scores`` with torch.gather, so they
are differentiable in ``scores`` (PFT/IET keep the gradient through the progressive chain).

Backends: the reference uses a stable ``torch.sort``; the Triton kernel sorts packed int64 keys (see
:mod:`sr_kernels._triton_graph`). float64 scores always run the reference (the packed key is 32-bit).
"""

from __future__ import annotations

import torch

from . import _checks
from ._dispatch import resolve_backend


def topk_slots_reference(scores: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted slot positions (B,H,N,k) int64, -1 past the live slots (the oracle)."""
    b, h, n, kk = scores.shape
    idx = index.expand(b, h, n, kk)
    live = (idx >= 0) & (scores > float("-inf"))
    key = scores.detach().masked_fill(~live, float("-inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    live_sorted = live.gather(-1, order)
    slots = order.masked_fill(~live_sorted, -1)[..., :k]
    if k > kk:
        slots = torch.cat([slots, slots.new_full((b, h, n, k - kk), -1)], dim=-1)
    return slots


def _gather_selected(
    scores: torch.Tensor, index: torch.Tensor, slots: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, n, kk = scores.shape
    dead = slots < 0
    safe = slots.clamp_min(0)
    values = scores.gather(-1, safe).masked_fill(dead, float("-inf"))
    sel = index.expand(b, h, n, kk).gather(-1, safe).masked_fill(dead, -1)
    return values, sel


def topk_select_reference(
    scores: torch.Tensor, index: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, index, slots) of the k best live slots per row, by plain torch ops."""
    slots = topk_slots_reference(scores, index, k)
    values, sel = _gather_selected(scores, index, slots)
    return values, sel, slots


def topk_select(
    scores: torch.Tensor,
    index: torch.Tensor,
    k: int,
    *,
    backend: str | None = None,
    check_index: bool = True,
    return_slots: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k highest live slots of every row, sorted descending (ties to the lower slot).

    Args:
        scores: (B, H, N, K) float logits or probabilities (e.g. from :func:`gather_scores`).
        index: integer (B, Hi, N, K), Hi in {1, H}; -1 marks an empty slot.
        k: number of slots to keep (>= 1; k > K pads with empty entries).
        return_slots: also return the kept slot positions (B, H, N, k) int64 (-1 for empty), e.g. to
            gather a per-slot bias or prior.

    Returns:
        values (B, H, N, k) in scores' dtype (-inf at empty entries), differentiable in scores;
        index (B, H, N, k) in index's dtype (-1 at empty entries): the token ids of the kept slots
        (per head even when Hi = 1, since each head selects its own slots); and the slots if asked.
    """
    scores = _checks.check_float("scores", scores, 4)
    b, h, n, kk = scores.shape
    _checks.check_same_device(("scores", scores), ("index", index))
    _checks.check_index(
        "index", index, batch=b, heads=h, rows=n, num_keys=2**62, check_values=check_index, keys_name="scores"
    )
    if index.shape[-1] != kk:
        raise ValueError(f"index has K = {index.shape[-1]} slots but scores has {kk}")
    k = _checks.check_positive_int("k", k)
    be = resolve_backend(backend, scores.device)
    if be == "triton" and scores.dtype != torch.float64:
        from ._triton_graph import topk_slots

        slots = topk_slots(scores.detach(), index, k)
    else:
        slots = topk_slots_reference(scores, index, k)
    values, sel = _gather_selected(scores, index, slots)
    return (values, sel, slots) if return_slots else (values, sel)
