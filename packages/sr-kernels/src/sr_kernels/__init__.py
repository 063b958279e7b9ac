"""Sparse gather-attention and graph-expansion ops (Triton on CUDA, PyTorch references elsewhere).

Public API:
    gather_attention(q, k, v, index, *, scale=None, bias=None, backend=None, check_index=True, return_lse=False)
    gather_scores(q, k, index, *, scale=None, bias=None, backend=None, check_index=True)
    gather_values(p, v, index, *, backend=None, check_index=True)
    topk_select(scores, index, k, *, backend=None, check_index=True, return_slots=False)
    expand_two_hop(index, probs, k1, k2, k_out, *, backend=None, check_index=True)
    iea_attention(q, k, v, index, *, keep, scale=None, bias=None, prior=None, av_on_selected=False,
                  return_slots=False, tile_union=None, deterministic=None, backend=None, check_index=True)
        -> IEAOutput(out, lse, kept_index, kept_logp, kept_slot): one fused IEA layer (attention + top-k)
    iea_tile_union(index, *, image_size=None, tile=(4, 4), max_union=512) -> TileUnion (tensor-core plan)
    dlsg_index(height, width, *, local, samples, dilation, generator=None, device=None)
    window_topk_select(q, k, topk, *, shared_heads=True, include_self=False)
    window_gather(x, ids, *, check_ids=True)
    window_topk_attention(q, k, v, ids, *, scale=None, impl="sdpa", check_ids=True)
    sr_kernels.flops: FLOP formulas of the sparse ops.

Triton is imported only when a Triton kernel first runs (see ``sr_kernels._dispatch``).
"""

from . import flops
from .dlsg import dlsg_index
from .expansion import expand_two_hop
from .gather_attention.op import gather_attention, gather_scores, gather_values
from .iea_attention.op import IEAOutput, iea_attention
from .iea_attention.union import TileUnion, iea_tile_union
from .selection import topk_select
from .window_topk.op import window_gather, window_topk_attention, window_topk_select

__version__ = "0.1.0"

__all__ = [
    "IEAOutput",
    "TileUnion",
    "__version__",
    "dlsg_index",
    "expand_two_hop",
    "flops",
    "gather_attention",
    "gather_scores",
    "gather_values",
    "iea_attention",
    "iea_tile_union",
    "topk_select",
    "window_gather",
    "window_topk_attention",
    "window_topk_select",
]
