"""The readable oracle of ``iea_attention``: the unfused composition IEAttention has always run.

It is, step by step, what ``sr_layers.IEAttention.forward`` does with the public ops (gather_scores ->
log_softmax -> exp -> gather_values, topk_select), written with the plain-torch references of those
ops so that autograd gives every gradient (q, k, v, bias, prior and the gradient that flows back
through the kept log-probabilities). It builds (B,H,N,K) and (B,H,N,K,D) tensors: fine for tests.

One addition the layer never needed: rows without a live slot (every index -1, or every logit -inf).
``log_softmax`` would give NaN there; the contract (shared by every backend) is out = 0, lse = -inf,
kept index -1, kept logp -inf, kept slot -1, and zero gradients.
"""

from __future__ import annotations

import torch

from ..gather_attention import reference as gref
from ..selection import topk_select_reference

Tensor = torch.Tensor


def iea_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    *,
    keep: int,
    scale: float,
    bias: Tensor | None = None,
    prior: Tensor | None = None,
    av_on_selected: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out (B,H,N,D) in q's dtype, lse (B,H,N), kept_index (B,H,N,keep) in index's dtype,
    kept_logp (B,H,N,keep), kept_slot (B,H,N,keep) int64), all by differentiable torch ops.

    Shapes and meaning as in :func:`sr_kernels.iea_attention`; float32 arithmetic (float64 for float64
    inputs).
    """
    add = None
    if bias is not None:
        add = bias
    if prior is not None:
        add = prior if add is None else add + prior
    s = gref.gather_scores_reference(q, k, index, scale, add)  # -inf at empty slots
    empty_row = ~(s > float("-inf")).any(dim=-1, keepdim=True)
    logp = torch.log_softmax(s.masked_fill(empty_row, 0.0), dim=-1).masked_fill(empty_row, float("-inf"))
    lse = torch.logsumexp(s.masked_fill(empty_row, 0.0), dim=-1).masked_fill(empty_row[..., 0], float("-inf"))
    kept_logp, kept_index, kept_slot = topk_select_reference(logp, index, keep)
    on_selected = av_on_selected and keep < index.shape[-1]
    vc = v.to(s.dtype)
    if on_selected:  # PFT's rule: only the kept entries, not renormalised
        out = gref.gather_values_reference(kept_logp.exp(), vc, kept_index)
    else:  # the IET formula: every candidate of the list
        out = gref.gather_values_reference(logp.exp(), vc, index)
    return out.to(q.dtype), lse, kept_index, kept_logp, kept_slot
