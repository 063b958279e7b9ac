"""The per-layer candidate schedule of Individualized Exploratory Attention (IEA), as data.

The IET paper fixes only the architecture outline (8 blocks of 4 layers for IET, 8 of 3 for
IET-light; expansion in the last layer of blocks 1-4 with k1 = [22, 20, 14, 12] and
k2 = [12, 11, 9, 8], section 3.4) and the order of operations in a layer (section 3.2, Fig. 4):
the attention map over the layer's K candidates is computed, sparsified to its top k_s (Eq. 4,
not renormalised), the output aggregates the kept k_s only (Eq. 3 with A_s, I_s), and in an
expansion layer the two-hop expansion starts from that sparsified set (Eq. 5-8). Every number the
paper leaves open is a documented choice below; the model card
(``packages/sr-models/docs/iet-model-card.md``) lists them with the section each would come from.

How a schedule is read (``k_schedule[l]`` is the width ``K`` of layer ``l``'s candidate list, the
slots its QK runs over):

* layer 0 attends over the DLSG list, ``K0 = local**2 + samples**2`` slots (689 by default);
* a layer ``l`` that is not an expansion layer keeps the top ``k_s = k_schedule[l + 1]`` candidates
  of its attention map (sparsification), so ``k_schedule[l + 1] <= k_schedule[l]``;
* an expansion layer (the last layer of block ``b`` for ``b < len(expand_k1)``) keeps its own
  ``k_s = expand_ks[b] <= K`` (a real sparsification by default), then widens the kept set by
  two-hop expansion to ``k_schedule[l + 1]`` slots, with ``expand_ks[b] <= k_schedule[l + 1] <=
  expand_ks[b] + k1 * k2`` (the union of Eq. 8 can never be wider than that);
* the last layer keeps nothing for a next layer: its output aggregates all its K candidates and
  only its top-2 are selected (SF-FFN takes the best non-self token).

**What Eq. 8 drops when the union is wider than the next K.** Eq. 8 has no width cap:
``Dedup(I_s U N2)`` holds between k_s and k_s + k1 k2 distinct tokens per row. The default
schedules set the next K to the maximum, ``k_s + k1 * k2``, so nothing is ever dropped and each row
is a variable-width list up to that cap (the slots past its count are empty, ``-1``). A schedule may
choose a smaller cap; then the whole sparsified set I_s is kept and the weakest two-hop candidates
(by path weight p(i,u) p(u,v)) are dropped first. We keep I_s whole because Eq. 8 is a union that
contains I_s, which the sparsification of the same layer has just certified as strongly
correlated: a cut that also removed kept entries would be a second, differently-ranked
sparsification. A cross-set cut by weight would rank a one-hop probability p(i,j) against a path
product p(i,u) p(u,v); the two are not on one scale, and the kernel would need the path weights,
which ``expand_two_hop`` does not return.

Where the default numbers come from (the budget argument, in full in the model card): the
parameter count pins every non-attention MAC, so under PFT's ``flops()`` convention the paper's
Tables 4-6 leave an attention budget of about 5,540-5,740 candidate slots per query-head for IET
(mean of QK and AV widths summed over the 32 layers; 5,666 at x2) and about 4,285 for IET-light.
The schedules below spend 5,462 (IET) and 4,322 (IET-light), which puts the models' MACs at
1280 x 720 within 0.7% of the paper at x2, x3 and x4 (tested in ``sr_models``). Shape: the DLSG
list is cut by about a quarter per layer, each expansion layer keeps about two thirds of its list
before expanding to ``k_s + k1 k2``, K shrinks within every block and widens only at the four
expansions (supplementary Fig. 8), and blocks 5-8 taper as PFT's last blocks do.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

# QK widths K per layer (8 blocks x 4). Expansions: 176 + 22*12 = 440, 128 + 20*11 = 348,
# 112 + 14*9 = 238, 96 + 12*8 = 192 (see IET_EXPAND_KS). Sum of K = 6,147; sum of the AV widths
# (k_s per layer, K at the last) = 4,776; budget (mean) 5,462 slots per query-head.
IET_K_SCHEDULE: tuple[int, ...] = (
    689, 480, 352, 256,
    440, 336, 256, 192,
    348, 272, 208, 160,
    238, 192, 160, 128,
    192, 160, 144, 128,
    112, 104, 96, 88,
    80, 72, 64, 56,
    48, 40, 32, 24,
)  # fmt: skip
# k_s of the four expansion layers (layers 3, 7, 11, 15): about two thirds of their K.
IET_EXPAND_KS: tuple[int, ...] = (176, 128, 112, 96)

# IET-light (8 blocks x 3). Expansions: 160 + 264 = 424, 128 + 220 = 348, 128 + 126 = 254,
# 112 + 96 = 208. Sum of K = 4,995; of the AV widths 3,648; budget (mean) 4,322.
IET_LIGHT_K_SCHEDULE: tuple[int, ...] = (
    689, 384, 256,
    424, 288, 208,
    348, 256, 192,
    254, 192, 160,
    208, 176, 160,
    144, 128, 112,
    96, 80, 72,
    64, 56, 48,
)  # fmt: skip
IET_LIGHT_EXPAND_KS: tuple[int, ...] = (160, 128, 128, 112)

EXPANSION_PRIORS = ("uniform", "kept")


@dataclass(frozen=True)
class IEAScheduleConfig:
    """All IEA choices the paper leaves open, with their defaults and where they come from.

    Fields
    ------
    depths: layers per block. Paper section 3.4: 8 x 4 (IET) / 8 x 3 (IET-light).
    k_schedule: candidate width K per layer (len == sum(depths)); see the module docstring.
        Default: ``IET_K_SCHEDULE`` (our budget-matched choice; the paper gives no numbers).
    expand_ks: the kept width k_s of each expansion layer (one per entry of ``expand_k1``),
        the sparsified set the expansion starts from (section 3.2, Fig. 4). Default
        ``IET_EXPAND_KS`` = (176, 128, 112, 96), about two thirds of those layers' K.
    expand_k1, expand_k2: one-hop / two-hop fan-out of the expansion in the last layer of blocks
        1..len(expand_k1). Paper section 3.4: k1 = [22, 20, 14, 12], k2 = [12, 11, 9, 8].
    dlsg_local: side w of the dense local window of the first block's DLSG list (iea.md section 4
        item 2: w = 8, 64 slots, border-shifted so it is always full and contains the token itself).
    dlsg_samples: side G of the sparse global grid, G*G slots. Default 25 (625 slots, K0 = 689):
        supplementary F trains with 50 x 50 LR patches at d = 2 and 75 x 75 at d = 3, i.e. exactly
        G * d with G = 25, and section 4.2 explains the choice of d = 2 for training by "a smaller
        dilation allows for smaller patches", which only holds if the region G * d sets the patch;
        it also makes DLSG what section 3.2 claims, "a larger initial receptive field under
        similar computational cost" (75 x 75 at inference for 689 slots, against a 32 x 32 window's
        1024). The earlier G = 12 (iea.md item 3, K0 = 208, a 36 x 36 region) fits neither.
    train_dilation, eval_dilation: the DLSG dilation d (paper section 4.2 / supp. F: 2 in
        training, 3 at inference). Chosen by ``module.training``; overridable at forward time.
    av_on_selected: True (default, the paper's rule, section 3.2 Eq. 3-4 and Fig. 4, as in PFT):
        the output aggregates only the kept top-k_s entries of the layer's attention map, not
        renormalised. False: the output uses all K candidates (an ablation option; the rule of
        checkpoints saved before this default changed).
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
    expand_ks: tuple[int, ...] = IET_EXPAND_KS
    expand_k1: tuple[int, ...] = (22, 20, 14, 12)
    expand_k2: tuple[int, ...] = (12, 11, 9, 8)
    dlsg_local: int = 8
    dlsg_samples: int = 25
    train_dilation: int = 2
    eval_dilation: int = 3
    av_on_selected: bool = True
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

    def ks_schedule(self) -> tuple[int, ...]:
        """The kept width k_s of every layer (the next K, or ``expand_ks`` at an expansion layer);
        the last layer, which passes nothing on, counts as keeping its whole list."""
        plans = self.plans()
        return tuple(p.k_in if i == len(plans) - 1 else p.keep for i, p in enumerate(plans))

    def av_widths(self) -> tuple[int, ...]:
        """The slots each layer's output aggregates: k_s with ``av_on_selected`` (the paper's rule),
        else K."""
        if not self.av_on_selected:
            return self.k_schedule
        return self.ks_schedule()

    def candidate_budget(self) -> float:
        """Candidate slots per query-head over the network, ``(sum K + sum AV widths) / 2``: the
        attention costs ``2 * C * budget`` MACs per pixel (QK and AV each ``C`` per slot)."""
        return (sum(self.k_schedule) + sum(self.av_widths())) / 2


@dataclass(frozen=True)
class LayerPlan:
    """What one IEA layer does with its candidate list.

    k_in: width K of the incoming list (the slots QK runs over). keep: k_s, how many entries
    selection keeps, sorted by probability: the next layer's list, or at an expansion layer the set
    the expansion starts from; at the last layer 2 (only SF-FFN's best non-self token is needed).
    expand: (k1, k2, k_out) for an expansion layer, else None. use_rpb: slot-indexed bias (True)
    or LePE (False).
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
    if len(cfg.expand_ks) != len(cfg.expand_k1):
        raise ValueError(
            f"expand_ks has {len(cfg.expand_ks)} entries but expand_k1 has {len(cfg.expand_k1)}: give one kept "
            "width k_s per expansion block"
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
    for b, (k1, k2, ks) in enumerate(zip(cfg.expand_k1, cfg.expand_k2, cfg.expand_ks)):
        last = ends[b]
        k = cfg.k_schedule[last]
        if not 1 <= ks <= k:
            raise ValueError(f"expand_ks[{b}] = {ks} must lie in [1, K={k}] of block {b + 1}'s last layer")
        if not (1 <= k2 <= ks and 1 <= k1 <= ks):
            raise ValueError(
                f"expansion of block {b + 1}: k1={k1} and k2={k2} must lie in [1, k_s={ks}] (expand_ks[{b}]): "
                "the one- and two-hop neighbours are taken from the kept set"
            )
        k_out = cfg.k_schedule[last + 1]
        if not ks <= k_out <= ks + k1 * k2:
            raise ValueError(
                f"k_schedule[{last + 1}] = {k_out} after the expansion of block {b + 1} must lie in "
                f"[k_s, k_s + k1*k2] = [{ks}, {ks + k1 * k2}]: Dedup(I_s U N2) holds at least the k_s kept and at "
                "most k_s + k1*k2 tokens"
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
                keep = cfg.expand_ks[b]
            elif layer + 1 < n:
                keep = cfg.k_schedule[layer + 1]
            else:
                keep = min(2, k_in)  # last layer: only SF-FFN's top-1 (best non-self) is needed
            plans.append(LayerPlan(layer, b, k_in, keep, expand, b < cfg.rpb_blocks, has_prior))
            has_prior = expand is None or cfg.expansion_prior != "uniform"
            layer += 1
    return plans
