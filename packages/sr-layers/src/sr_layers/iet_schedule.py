"""The per-layer candidate schedule of Individualized Exploratory Attention (IEA), as data.

The IET paper fixes only the architecture outline (8 blocks of 4 layers for IET, 8 of 3 for
IET-light; expansion in the last layer of blocks 1-4 with k1 = [22, 20, 14, 12] and
k2 = [12, 11, 9, 8]). Everything else below is a documented choice taken from
``shared/specs/iea.md`` sections 4-5 (the recommendations for the questions the paper leaves open);
each field says where its default comes from.

How a schedule is read (``k_schedule[l]`` is the width ``K`` of layer ``l``'s candidate list):

* layer 0 attends over the DLSG list, ``K0 = local**2 + samples**2`` slots (208 by default);
* a layer ``l`` that is not an expansion layer keeps the top ``k_schedule[l + 1]`` candidates of its
  attention map (sparsification), so ``k_schedule[l + 1] <= k_schedule[l]``;
* an expansion layer (the last layer of each of the first ``len(expand_k1)`` blocks) keeps its
  whole list, sorted, and widens it by two-hop expansion to ``k_schedule[l + 1]`` slots
  (weakest two-hop candidates dropped first, ``-1`` padding if fewer are found);
* the last layer keeps nothing (only its top-2, from which SF-FFN takes the best non-self token).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

# iea.md section 5 (labelled there as a guess): K shrinks within a block, expansion widens it at
# the ends of blocks 1-4, blocks 5-8 taper to 16 as in PFT. Sum of K = 3,040 slots per query-head.
IET_K_SCHEDULE: tuple[int, ...] = (
    208, 160, 128, 96,
    256, 192, 144, 96,
    224, 160, 112, 80,
    160, 128, 96, 64,
    128, 96, 64, 64,
    64, 48, 48, 32,
    32, 32, 32, 24,
    24, 16, 16, 16,
)  # fmt: skip

# IET-light (8 blocks x 3 layers): iea.md gives no numbers; this is our choice, in the section-5
# pattern (shrink within a block, expand at the ends of blocks 1-4, taper in blocks 5-8) with wider
# lists than IET: at 54 channels the attention is a large share of IET-light's cost, and the paper
# puts IET-light's FLOPs level with PFT-light's (277.9G vs 278.3G at x2), whose first layers attend
# densely over 32x32 windows. Sum of K = 3,376 slots per query-head, which puts IET-light's MACs
# within ~6% of the paper's figures (see sr_models.families.iet).
IET_LIGHT_K_SCHEDULE: tuple[int, ...] = (
    208, 192, 160,
    288, 224, 160,
    256, 192, 128,
    224, 160, 128,
    192, 160, 128,
    128, 96, 64,
    64, 64, 48,
    48, 32, 32,
)  # fmt: skip

EXPANSION_PRIORS = ("uniform", "kept")


@dataclass(frozen=True)
class IEAScheduleConfig:
    """All IEA choices the paper leaves open, with their defaults and where they come from.

    Fields
    ------
    depths: layers per block. Paper: 8 x 4 (IET) / 8 x 3 (IET-light).
    k_schedule: candidate width K per layer (len == sum(depths)); see the module docstring.
        Default: iea.md section 5 (a guess there, labelled as such).
    expand_k1, expand_k2: one-hop / two-hop fan-out of the expansion in the last layer of blocks
        1..len(expand_k1). Paper section 3.4: k1 = [22, 20, 14, 12], k2 = [12, 11, 9, 8].
    dlsg_local: side w of the dense local window of the first block's DLSG list (iea.md section 4
        item 2: w = 8, 64 slots, border-shifted so it is always full and contains the token itself).
    dlsg_samples: side G of the sparse global grid, G*G slots (iea.md item 3: keep the number of
        samples fixed, G = 12 -> 144 slots, so the region side G*d grows from 24 at d = 2 to 36 at
        d = 3 while K stays 208).
    train_dilation, eval_dilation: the DLSG dilation d (paper section 4.2 / supp. F: 2 in
        training, 3 at inference). Chosen by ``module.training``; overridable at forward time.
    av_on_selected: False = the IET formula, the output uses all K candidates of the layer
        (``O = SMM(A, V, I)`` with the same I, iea.md item 8); True = PFT's rule, the output uses
        only the kept top-k_s entries, not renormalised.
    expansion_prior: the prior the list produced by an expansion carries into the next layer.
        "uniform" (default, iea.md item 11): every candidate gets the same log-prior, which is the
        same as no prior, so progressive focusing restarts after an expansion and new candidates
        get a fair chance. "kept": the kept candidates carry their log-probabilities and every
        new candidate gets the log-probability of the weakest kept one.
    rpb_blocks: how many leading blocks use the slot-indexed relative position bias instead of
        LePE. Paper section 3.4: relative positional encoding only in the first block, LePE in
        all the others.
    rpb_shared_heads: one bias table for all heads (PFT-light's rule for small models) instead of
        one column per head (iea.md item 6).
    """

    depths: tuple[int, ...] = (4,) * 8
    k_schedule: tuple[int, ...] = IET_K_SCHEDULE
    expand_k1: tuple[int, ...] = (22, 20, 14, 12)
    expand_k2: tuple[int, ...] = (12, 11, 9, 8)
    dlsg_local: int = 8
    dlsg_samples: int = 12
    train_dilation: int = 2
    eval_dilation: int = 3
    av_on_selected: bool = False
    expansion_prior: str = "uniform"
    rpb_blocks: int = 1
    rpb_shared_heads: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):  # lists (e.g. from a JSON config) become tuples: the config stays hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        validate_schedule(self)

    @property
    def num_layers(self) -> int:
        """Total number of IEA layers, ``sum(depths)``."""
        return sum(self.depths)

    @property
    def dlsg_width(self) -> int:
        """Width K0 of the DLSG list: ``dlsg_local**2 + dlsg_samples**2``."""
        return self.dlsg_local**2 + self.dlsg_samples**2

    def plans(self) -> tuple[LayerPlan, ...]:
        """One :class:`LayerPlan` per layer, in network order."""
        return _plans_cached(self)


@dataclass(frozen=True)
class LayerPlan:
    """What one IEA layer does with its candidate list.

    k_in: width of the incoming list. keep: how many entries selection keeps for the next layer
    (sorted by probability; at expansion layers the whole list). expand: (k1, k2, k_out) for an
    expansion layer, else None. use_rpb: slot-indexed bias (True) or LePE (False).
    has_prior: whether the incoming list carries a log-prior from the previous layer.
    """

    index: int
    block: int
    k_in: int
    keep: int
    expand: tuple[int, int, int] | None
    use_rpb: bool
    has_prior: bool


def validate_schedule(cfg: IEAScheduleConfig) -> None:
    """Raise ValueError naming the field when the schedule is inconsistent."""
    if not cfg.depths or any(d < 1 for d in cfg.depths):
        raise ValueError(f"depths must be a non-empty tuple of positive ints, got {cfg.depths!r}")
    n = sum(cfg.depths)
    if len(cfg.k_schedule) != n:
        raise ValueError(f"k_schedule has {len(cfg.k_schedule)} entries but depths sum to {n} layers")
    if any(k < 1 for k in cfg.k_schedule):
        raise ValueError(f"k_schedule entries must be positive, got {cfg.k_schedule!r}")
    if len(cfg.expand_k1) != len(cfg.expand_k2):
        raise ValueError(
            f"expand_k1 ({len(cfg.expand_k1)} entries) and expand_k2 ({len(cfg.expand_k2)}) differ in length"
        )
    if len(cfg.expand_k1) >= len(cfg.depths) and len(cfg.expand_k1) > 0:
        raise ValueError(
            f"expansion in {len(cfg.expand_k1)} blocks needs at least one more block after them; "
            f"depths has {len(cfg.depths)}"
        )
    if cfg.dlsg_local < 1 or cfg.dlsg_samples < 0:
        raise ValueError(f"dlsg_local must be >= 1 and dlsg_samples >= 0, got {cfg.dlsg_local}, {cfg.dlsg_samples}")
    if cfg.k_schedule[0] != cfg.dlsg_width:
        raise ValueError(
            f"k_schedule[0] = {cfg.k_schedule[0]} must equal the DLSG width "
            f"dlsg_local**2 + dlsg_samples**2 = {cfg.dlsg_width}"
        )
    for name in ("train_dilation", "eval_dilation"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.expansion_prior not in EXPANSION_PRIORS:
        raise ValueError(f"expansion_prior must be one of {EXPANSION_PRIORS}, got {cfg.expansion_prior!r}")
    if not 0 <= cfg.rpb_blocks <= len(cfg.depths):
        raise ValueError(f"rpb_blocks must be in [0, {len(cfg.depths)}], got {cfg.rpb_blocks}")
    ends = _block_ends(cfg.depths)
    for b, (k1, k2) in enumerate(zip(cfg.expand_k1, cfg.expand_k2)):
        last = ends[b]
        k = cfg.k_schedule[last]
        if not (1 <= k2 <= k and 1 <= k1 <= k):
            raise ValueError(
                f"expansion of block {b + 1}: k1={k1} and k2={k2} must lie in [1, K={k}] of its last layer"
            )
    expansion_layers = {ends[b] for b in range(len(cfg.expand_k1))}
    for layer in range(n - 1):
        if layer not in expansion_layers and cfg.k_schedule[layer + 1] > cfg.k_schedule[layer]:
            raise ValueError(
                f"k_schedule[{layer + 1}] = {cfg.k_schedule[layer + 1]} > k_schedule[{layer}] = "
                f"{cfg.k_schedule[layer]}: a list can only grow at an expansion layer (last layer of "
                f"blocks 1..{len(cfg.expand_k1)})"
            )


def _block_ends(depths: tuple[int, ...]) -> list[int]:
    ends, acc = [], 0
    for d in depths:
        acc += d
        ends.append(acc - 1)
    return ends


@lru_cache(maxsize=64)
def _plans_cached(cfg: IEAScheduleConfig) -> tuple[LayerPlan, ...]:
    return tuple(_build_plans(cfg))


def _build_plans(cfg: IEAScheduleConfig) -> list[LayerPlan]:
    plans = []
    ends = _block_ends(cfg.depths)
    n = cfg.num_layers
    layer = 0
    has_prior = False
    for b, depth in enumerate(cfg.depths):
        for _ in range(depth):
            k_in = cfg.k_schedule[layer]
            expand = None
            if b < len(cfg.expand_k1) and layer == ends[b]:
                expand = (cfg.expand_k1[b], cfg.expand_k2[b], cfg.k_schedule[layer + 1])
                keep = k_in
            elif layer + 1 < n:
                keep = cfg.k_schedule[layer + 1]
            else:
                keep = min(2, k_in)  # last layer: only SF-FFN's top-1 (best non-self) is needed
            plans.append(LayerPlan(layer, b, k_in, keep, expand, b < cfg.rpb_blocks, has_prior))
            has_prior = expand is None or cfg.expansion_prior != "uniform"
            layer += 1
    return plans
