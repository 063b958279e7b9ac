"""Individualized Exploratory Attention (IEA), the attention of IET (paper section 3.2).

Every token attends over its own candidate list ``I`` (B, Hi, N, K) of token ids (``-1`` = empty
slot), carried from layer to layer in an :class:`IEAState`. One layer:

1. ``q, k, v = split(W_qkv x)`` per head (B, H, N, D).
2. logits ``s = D^-1/2 q_i . k_j + b + lambda`` for the K candidates j of token i
   (``sr_kernels.gather_scores``), where ``b`` is the first block's slot-indexed relative position
   bias (:mod:`sr_layers.iet_dlsg`) and ``lambda`` the progressive prior: the previous layer's
   log-probabilities at the candidates it kept (PFT's Hadamard re-weighting
   ``P * P_prev / sum`` is exactly ``softmax(s + log P_prev)``; log-space keeps it exact and
   differentiable). The chain is not detached, as in PFT.
3. ``P = softmax(s)``; sparsification (Eq. 4): the top ``k_s = plan.keep`` candidates of ``P`` per
   row, sorted best first (``sr_kernels.topk_select``), not renormalised; their log-probabilities
   become the next layer's prior.
4. output (Eq. 3 with A_s, I_s; section 3.2 and Fig. 4, PFT's rule): ``O = sum_c P_c v_j`` over the
   kept k_s only (``av_on_selected=True``, the default); ``av_on_selected=False`` aggregates all K
   candidates instead (an ablation option). The last layer, which passes nothing on, aggregates all
   K. Plus LePE ``GELU(DWConv(V))`` in the blocks without bias; then ``W_proj``.
5. at the last layer of blocks 1-4, expansion (Eq. 5-8) from the sparsified set: the kept k_s
   (sorted), the top-k1 of them as one-hop neighbours u and the top-k2 of each u's own kept list
   give ``Dedup(I_s U N2)`` as the next list (``sr_kernels.expand_two_hop``); if it is wider than
   the next K, the weakest two-hop candidates are dropped (see :mod:`sr_layers.iet_schedule`).

The top-1 non-self entry of the sorted selection is returned for SF-FFN. All sparse work goes
through the public ``sr_kernels`` API, and every tensor this module builds is O(N K) (no N x N
map). Inside the ops that is true of the Triton kernels (CUDA) but not of the torch backend (CPU):
its dense-then-gather strategy computes a (B, H, N, N + 1) score map with one matmul whenever
``N <= 0.5 K D`` (``sr_kernels.gather_attention.torch_fast.use_dense``), because one matmul is
faster on a CPU than N K gathers. That map is never bigger than half the (B, H, N, K, D) gathered
rows the other strategy builds, and both are bounded: the torch backend runs the query rows in
chunks so that one such temporary holds at most ``torch_fast.MAX_TEMP_ELEMENTS`` values (256 MB in
fp32), i.e. a (B, H, rows, N + 1) slice of the map, never the whole N x N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import sr_kernels
from sr_layers.iet_schedule import LayerPlan


@dataclass
class IEAState:
    """The candidate list handed from one IEA layer to the next.

    index: (B, Hi, N, K) int32 or int64 token ids, Hi in {1, H}, -1 = empty slot.
    prior: (B, H, N, K) float log-prior added to the logits, or None (no prior).
    bias_ids: (B, Hi, N, K) integer rows of the slot-indexed bias table (first block only) or None.
    """

    index: torch.Tensor
    prior: torch.Tensor | None = None
    bias_ids: torch.Tensor | None = None


def first_non_self(sorted_index: torch.Tensor) -> torch.Tensor:
    """Best candidate that is not the token itself, from a list sorted best-first.

    sorted_index: (B, H, N, k) integer with k >= 1. Returns (B, H, N) of its dtype, -1 where no such entry
    exists among the first two columns.
    """
    n = sorted_index.shape[2]
    own = torch.arange(n, device=sorted_index.device).view(1, 1, n)
    first = sorted_index[..., 0]
    if sorted_index.shape[-1] < 2:
        return torch.where(first == own, torch.full_like(first, -1), first)
    return torch.where(first == own, sorted_index[..., 1], first)


class IEAttention(nn.Module):
    """One IEA layer (see the module docstring). Parameters: ``qkv``, ``proj`` and either ``rpb``
    (first block: a (table_rows, 1 or H) bias table indexed by slot) or ``lepe`` (a depthwise conv).

    dim: C; num_heads: H (C divisible by H); plan: this layer's :class:`LayerPlan`;
    rpb_rows: rows of the bias table (needed when ``plan.use_rpb``); rpb_shared_heads: one column
    for all heads; lepe_kernel: LePE's k; av_on_selected / expansion_prior: see
    :class:`sr_layers.iet_schedule.IEAScheduleConfig`.

    ``check_index`` (class attribute, default False): let the sparse ops validate index values. The
    lists come from ``dlsg_index`` / ``topk_select`` / ``expand_two_hop`` and are valid by
    construction; the check costs a host sync per op (and cannot run on meta tensors).

    ``use_fused_op`` (class attribute, default True): run steps 2-4 as one fused op,
    ``sr_kernels.iea_attention`` (one Triton kernel on CUDA, which writes no (B, H, N, K) tensor in the
    forward pass; its torch path on the CPU). False runs the readable composition
    ``gather_scores -> log_softmax -> gather_values / topk_select``, kept as the oracle the fused op is
    tested against (``tests/test_iea_layer.py``).
    """

    check_index: bool = False
    use_fused_op: bool = True

    def __init__(
        self,
        dim: int,
        num_heads: int,
        plan: LayerPlan,
        *,
        rpb_rows: int = 0,
        rpb_shared_heads: bool = False,
        lepe_kernel: int = 7,
        av_on_selected: bool = True,
        expansion_prior: str = "uniform",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.plan = plan
        self.av_on_selected = av_on_selected
        self.expansion_prior = expansion_prior
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if plan.use_rpb:
            if rpb_rows < 1:
                raise ValueError("rpb_rows must be positive for a layer that uses the relative position bias")
            self.rpb = nn.Parameter(torch.zeros(rpb_rows, 1 if rpb_shared_heads else num_heads))
            nn.init.trunc_normal_(self.rpb, std=0.02)
            self.lepe = None
        else:
            self.rpb = None
            self.lepe = nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim)

    def _rpb_bias(self, state: IEAState) -> torch.Tensor | None:
        """The first block's slot-indexed bias, (B, Hi or H, N, K) float, or None in LePE layers."""
        if self.rpb is None:
            return None
        if state.bias_ids is None:
            raise ValueError("a layer with the relative position bias needs state.bias_ids")
        ids = state.bias_ids
        if self.rpb.shape[1] == 1:
            return self.rpb[:, 0][ids]  # (B, Hi, N, K)
        rows = self.rpb.shape[0]
        offs = torch.arange(self.num_heads, device=ids.device, dtype=ids.dtype).view(1, -1, 1, 1) * rows
        return self.rpb.t().reshape(-1)[ids + offs]  # (B, H, N, K)

    def _bias(self, state: IEAState, b: int, n: int) -> torch.Tensor | None:
        """The bias and the prior summed, (B, H, N, K), for the composition path."""
        bias = self._rpb_bias(state)
        if bias is not None:
            bias = bias.expand(b, self.num_heads, n, state.index.shape[-1])
        if state.prior is not None:
            bias = state.prior if bias is None else bias + state.prior
        return bias

    def _attend_composed(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: IEAState, keep: int, on_selected: bool,
        want_slots: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Steps 2-4 as separate sparse ops (the oracle of the fused op). Returns (out (B, H, N, D),
        kept_idx (B, H, N, keep), kept_logp (B, H, N, keep), kept_slot or None)."""
        b, _, n, _ = q.shape
        index = state.index
        scores = sr_kernels.gather_scores(
            q, k, index, scale=self.scale, bias=self._bias(state, b, n), check_index=self.check_index
        )
        # every row has a live slot (the DLSG window holds the token itself; kept lists are never
        # empty), so log_softmax is finite; it keeps only its output for the backward pass
        logp = torch.log_softmax(scores, dim=-1)
        del scores  # O(N K) buffers are released as soon as they are dead (peak memory)
        out = None
        if not on_selected:  # all K (the last layer, or the av_on_selected=False ablation)
            out = sr_kernels.gather_values(logp.exp(), v, index, check_index=self.check_index)
        kept_slot = None
        if want_slots:
            kept_logp, kept_idx, kept_slot = sr_kernels.topk_select(
                logp, index, keep, return_slots=True, check_index=self.check_index
            )
        else:
            kept_logp, kept_idx = sr_kernels.topk_select(logp, index, keep, check_index=self.check_index)
        del logp
        if out is None:  # the paper's rule (Eq. 3-4, as in PFT): only the kept k_s, not renormalised
            out = sr_kernels.gather_values(kept_logp.exp(), v, kept_idx, check_index=self.check_index)
        return out, kept_idx, kept_logp, kept_slot

    def forward(
        self, x: torch.Tensor, size: tuple[int, int], state: IEAState, *, last: bool = False
    ) -> tuple[torch.Tensor, IEAState | None, torch.Tensor]:
        """x: (B, N, C) normalised tokens of a ``size = (height, width)`` image; state: the incoming
        list. Returns (output (B, N, C), next state or None when ``last``, top-1 non-self neighbour
        per head (B, H, N) in the index dtype, -1 where none)."""
        b, n, _ = x.shape
        height, width = size
        index = state.index
        if index.dim() != 4 or index.shape[0] != b or index.shape[2] != n:
            raise ValueError(f"state.index must have shape ({b}, Hi, {n}, K), got {tuple(index.shape)}")
        q, k, v = rearrange(self.qkv(x), "b n (t h d) -> t b h n d", t=3, h=self.num_heads)
        plan = self.plan
        keep = plan.keep
        on_selected = self.av_on_selected and not last and keep < index.shape[-1]
        # in the bias block the kept slot positions come back too, so the bias ids follow their candidates
        want_slots = state.bias_ids is not None and not last
        if self.use_fused_op:
            res = sr_kernels.iea_attention(
                q, k, v, index, keep=keep, scale=self.scale, bias=self._rpb_bias(state), prior=state.prior,
                av_on_selected=on_selected, return_slots=want_slots, check_index=self.check_index,
            )
            out, kept_idx, kept_logp, kept_slot = res.out, res.kept_index, res.kept_logp, res.kept_slot
        else:
            out, kept_idx, kept_logp, kept_slot = self._attend_composed(q, k, v, state, keep, on_selected, want_slots)
        kept_bias = None
        if want_slots:
            kk = index.shape[-1]
            kept_bias = torch.gather(state.bias_ids.expand(b, self.num_heads, n, kk), 3, kept_slot.clamp_min(0))
            del kept_slot
        out = rearrange(out, "b h n d -> b n (h d)")
        if self.lepe is not None:
            # token-major (B, N, C) viewed as an image is channels_last, the fast depthwise-conv layout
            v_img = rearrange(rearrange(v, "b h n d -> b n (h d)"), "b (y x) c -> b c y x", y=height, x=width)
            out = out + rearrange(F.gelu(self.lepe(v_img)), "b c y x -> b (y x) c")
        out = self.proj(out)
        top1 = first_non_self(kept_idx)
        if last:
            return out, None, top1

        prior = kept_logp.masked_fill(kept_idx < 0, 0.0)
        if plan.expand is None:
            return out, IEAState(kept_idx, prior, kept_bias), top1

        k1, k2, k_out = plan.expand
        new_idx, _count = sr_kernels.expand_two_hop(
            kept_idx, kept_logp.detach().exp(), k1, k2, k_out, check_index=self.check_index
        )
        new_prior = None
        if self.expansion_prior == "kept":
            # expand_two_hop puts the current (kept) entries first, in their order; a kept token keeps
            # its log-probability, every other entry gets the weakest kept one's (a constant per row)
            width = min(keep, k_out)
            live = kept_idx >= 0
            floor = prior.masked_fill(~live, float("inf")).amin(-1, keepdim=True)
            floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
            new_prior = floor.expand(b, self.num_heads, n, k_out).clone()
            same = (new_idx[..., :width] == kept_idx[..., :width]) & live[..., :width]
            new_prior[..., :width] = torch.where(same, prior[..., :width], new_prior[..., :width])
        return out, IEAState(new_idx, new_prior, None), top1
