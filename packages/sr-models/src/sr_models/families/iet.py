"""IET and IET-light (Meng, Long, Gu: "From Local Windows to Adaptive Candidates via Individualized
Exploratory", the IET paper). The official code is not released; this follows the paper and the
SwinIR/PFT conventions it builds on (shared/specs/iea.md):

* input: ``x = (x - mean) * img_range`` with DIV2K's RGB mean and ``img_range = 1`` (PFT), undone
  at the end; no padding (IEA's candidate lists work for any image size), so ``pad_multiple = 1``;
* ``conv_first`` 3x3 -> tokens -> LayerNorm (PFT's patch-embed norm) -> residual blocks, each
  ``n`` IET layers then a 3x3 conv on the image plus the block input -> LayerNorm ->
  ``conv_after_body`` 3x3 plus the long skip -> upsampler;
* an IET layer: ``x = x + IEA(LN(x))``, ``x = x + SF-FFN(LN(x), top-1 of that IEA)``;
* upsampler: "pixelshuffle" (IET: conv 3x3 -> 64, LeakyReLU, (conv 3x3 + PixelShuffle) stages,
  conv 3x3 -> 3) or "pixelshuffledirect" (IET-light: one conv 3x3 -> 3 s^2 + PixelShuffle).

**Dilation.** The first block's DLSG list uses dilation ``train_dilation`` (2) while
``module.training`` and ``eval_dilation`` (3) otherwise (paper Table 2 / supp. F). Override it at
forward time with ``model(x, dilation=d)`` or for every later call with ``model.set_dilation(d)``
(``model.set_dilation(None)`` restores the train/eval rule); the current override is
``model.dilation``. Dilation changes the candidates, never the parameters.

**SF-FFN width.** The paper does not give the FFN's hidden width. ``ffn_hidden`` is chosen so that
the parameter counts land on the paper's (Tables 4-6: IET 19.7M/19.9M/19.8M, IET-light
783K/790K/801K at x2/x3/x4): 336 (1.4 C) for IET and 42 (0.78 C) for IET-light.

**MACs.** ``iet_macs(config, scale, h, w, convention)`` (and ``model.macs(h, w, convention)``)
gives the multiply-accumulates of one forward pass on an ``h x w`` LR input analytically, under
two conventions: "full", what runs (torch's FlopCounterMode, 2 FLOPs per MAC, sparse ops counted by
sr_kernels' formulas, equals exactly twice it; see the tests, which count on meta tensors), and
"pft", PFT's ``flops()``, the convention of the paper's tables (conv_after_body as 3 C^2, only the
pixel-shuffle convs of the upsampler, everything at the LR size). The paper's tables are at a
1280 x 720 output (their PFT rows are what PFT's ``flops()`` gives at 640x360 / 426x240 / 320x180
LR), although the text says 1280 x 640. With the default schedules, under PFT's convention at
1280 x 720: IET 4.997T / 2.236T / 1.258T and IET-light 278.9G / 123.7G / 69.7G at x2 / x3 / x4
(paper 5.02T / 2.25T / 1.26T and 277.9G / 123.3G / 69.5G). Every figure, both conventions and both
output sizes, is in the model card, ``packages/sr-models/docs/iet-model-card.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from einops import rearrange
from torch import nn

from sr_layers.iea import IEAState, IEAttention
from sr_layers.iet_dlsg import DLSGCandidates, rpb_table_size
from sr_layers.iet_schedule import IET_LIGHT_EXPAND_KS, IET_LIGHT_K_SCHEDULE, IEAScheduleConfig
from sr_layers.sf_ffn import SFFFN
from sr_models.families._config import config_dict, resolve_config
from sr_models.registry import register_model

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLERS = ("pixelshuffle", "pixelshuffledirect")
MAC_CONVENTIONS = ("full", "pft")  # see iet_macs
_IEA_DEFAULTS = IEAScheduleConfig()


@dataclass(frozen=True)
class IETConfig:
    """Resolved IET configuration. The IEA fields (``depths`` .. ``rpb_shared_heads``) are documented
    in :class:`sr_layers.iet_schedule.IEAScheduleConfig`, which is built from them."""

    embed_dim: int = 240
    num_heads: int = 6
    ffn_hidden: int = 336
    ffn_kernel: int = 7
    lepe_kernel: int = 7
    upsampler: str = "pixelshuffle"
    num_feat: int = 64
    img_range: float = 1.0
    rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN
    # The IEA fields: defaults (and their documentation) live in IEAScheduleConfig.
    depths: tuple[int, ...] = _IEA_DEFAULTS.depths
    k_schedule: tuple[int, ...] = _IEA_DEFAULTS.k_schedule
    expand_ks: tuple[int, ...] = _IEA_DEFAULTS.expand_ks
    expand_k1: tuple[int, ...] = _IEA_DEFAULTS.expand_k1
    expand_k2: tuple[int, ...] = _IEA_DEFAULTS.expand_k2
    dlsg_local: int = _IEA_DEFAULTS.dlsg_local
    dlsg_samples: int = _IEA_DEFAULTS.dlsg_samples
    train_dilation: int = _IEA_DEFAULTS.train_dilation
    eval_dilation: int = _IEA_DEFAULTS.eval_dilation
    av_on_selected: bool = _IEA_DEFAULTS.av_on_selected
    expansion_prior: str = _IEA_DEFAULTS.expansion_prior
    rpb_blocks: int = _IEA_DEFAULTS.rpb_blocks
    rpb_shared_heads: bool = _IEA_DEFAULTS.rpb_shared_heads

    def __post_init__(self) -> None:
        for f in fields(self):  # lists (e.g. from a JSON config) become tuples: the config stays hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        for name in ("embed_dim", "num_heads", "ffn_hidden", "ffn_kernel", "lepe_kernel", "num_feat"):
            if getattr(self, name) <= 0:
                raise ValueError(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {self.upsampler!r}")
        if len(self.rgb_mean) != 3:
            raise ValueError(f"rgb_mean must have 3 entries, got {self.rgb_mean!r}")
        if self.rpb_blocks > 1:
            raise ValueError(
                f"rpb_blocks must be 0 or 1, got {self.rpb_blocks}: the slot-indexed bias is defined on "
                "the DLSG list, which only the first block sees"
            )
        self.schedule()  # validates the IEA fields

    def schedule(self) -> IEAScheduleConfig:
        """The IEA schedule built from this config's IEA fields."""
        return IEAScheduleConfig(**{f.name: getattr(self, f.name) for f in fields(IEAScheduleConfig)})


PRESETS: dict[str, dict[str, Any]] = {
    "iet": {},
    "iet-light": {
        "embed_dim": 54,
        "num_heads": 3,
        "ffn_hidden": 42,
        "upsampler": "pixelshuffledirect",
        "depths": (3,) * 8,
        "k_schedule": IET_LIGHT_K_SCHEDULE,
        "expand_ks": IET_LIGHT_EXPAND_KS,
        "rpb_shared_heads": True,
    },
}


class IETLayer(nn.Module):
    """``x + IEA(LN(x))`` then ``x + SF-FFN(LN(x), top1)``. forward(x (B, N, C), size, state, last)
    -> (x, next state or None)."""

    def __init__(self, cfg: IETConfig, plan: Any, sched: IEAScheduleConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.norm1 = nn.LayerNorm(c)
        self.attn = IEAttention(
            c,
            cfg.num_heads,
            plan,
            rpb_rows=rpb_table_size(sched.dlsg_local, sched.dlsg_samples),
            rpb_shared_heads=sched.rpb_shared_heads,
            lepe_kernel=cfg.lepe_kernel,
            av_on_selected=sched.av_on_selected,
            expansion_prior=sched.expansion_prior,
        )
        self.norm2 = nn.LayerNorm(c)
        self.ffn = SFFFN(c, cfg.num_heads, cfg.ffn_hidden, cfg.ffn_kernel)

    def forward(
        self, x: torch.Tensor, size: tuple[int, int], state: IEAState, last: bool = False
    ) -> tuple[torch.Tensor, IEAState | None]:
        a, state_out, top1 = self.attn(self.norm1(x), size, state, last=last)
        x = x + a
        x = x + self.ffn(self.norm2(x), size, top1)
        return x, state_out


class IETBlock(nn.Module):
    """The layers of one residual block, a 3x3 conv on the image and the block residual."""

    def __init__(self, cfg: IETConfig, plans: list[Any], sched: IEAScheduleConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(IETLayer(cfg, p, sched) for p in plans)
        self.conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 3, padding=1)

    def forward(
        self, x: torch.Tensor, size: tuple[int, int], state: IEAState, last_block: bool = False
    ) -> tuple[torch.Tensor, IEAState | None]:
        """x: (B, N, C) tokens. Returns (B, N, C) and the state for the next block."""
        res = x
        n_layers = len(self.layers)
        for i, layer in enumerate(self.layers):
            x, state = layer(x, size, state, last=last_block and i == n_layers - 1)
        h, w = size
        img = self.conv(rearrange(x, "b (y x) c -> b c y x", y=h, x=w))
        return rearrange(img, "b c y x -> b (y x) c") + res, state


class IETUpsampler(nn.Module):
    """SwinIR's upsamplers. "pixelshuffle": ``conv_before_upsample`` (conv 3x3 C -> num_feat +
    LeakyReLU(0.01, SwinIR/PFT's default slope)), ``upsample`` ((conv 3x3 -> 4 num_feat, PS(2)) x
    log2 s, or (conv -> 9 num_feat, PS(3))) and ``conv_last`` (3x3 -> 3).
    "pixelshuffledirect": one conv 3x3 C -> 3 s^2 and PS(s). forward((B, C, h, w)) -> (B, 3, hs, ws)."""

    def __init__(self, kind: str, dim: int, scale: int, num_feat: int = 64) -> None:
        super().__init__()
        self.kind = kind
        if kind == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(dim, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
            return
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, num_feat, 3, padding=1), nn.LeakyReLU(inplace=True))
        stages: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                stages += [nn.Conv2d(num_feat, 4 * num_feat, 3, padding=1), nn.PixelShuffle(2)]
        elif scale == 3:
            stages += [nn.Conv2d(num_feat, 9 * num_feat, 3, padding=1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale {scale} is not supported by the pixelshuffle upsampler (use 2^n or 3)")
        self.upsample = nn.Sequential(*stages)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 3, h s, w s)."""
        if self.kind == "pixelshuffledirect":
            return self.upsample(x)
        return self.conv_last(self.upsample(self.conv_before_upsample(x)))


class IET(nn.Module):
    """The IET network. forward(x (B, 3, h, w) float RGB in [0, 1], dilation=None) -> (B, 3, hs, ws).

    Any batch size and any h, w >= 1 (no padding, no multiple-of constraint)."""

    pad_multiple = 1
    pad_mode = "reflect"
    min_input_size = 1

    def __init__(self, cfg: IETConfig, scale: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.sched = cfg.schedule()
        self.upscale = scale
        c = cfg.embed_dim
        self.register_buffer("mean", torch.tensor(cfg.rgb_mean).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, c, 3, padding=1)
        self.patch_norm = nn.LayerNorm(c)
        plans = list(self.sched.plans())
        blocks, start = [], 0
        for depth in cfg.depths:
            blocks.append(IETBlock(cfg, plans[start : start + depth], self.sched))
            start += depth
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(c)
        self.conv_after_body = nn.Conv2d(c, c, 3, padding=1)
        self.upsampler = IETUpsampler(cfg.upsampler, c, scale, cfg.num_feat)
        self.dilation: int | None = None
        self._dlsg = DLSGCandidates(cfg.dlsg_local, cfg.dlsg_samples)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # SwinIR/PFT: truncated normal (std 0.02) Linear weights, zero biases, unit LayerNorms.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    #: MAC conventions :meth:`macs` knows (``sr-eval profile`` reports them): "full" (what runs) and
    #: "pft" (PFT's ``flops()``, the convention of the IET paper's tables); see :func:`iet_macs`.
    mac_conventions = MAC_CONVENTIONS

    def macs(self, height: int, width: int, convention: str = "full") -> int:
        """Multiply-accumulates of one forward on an LR ``height x width`` input under ``convention``
        (:func:`iet_macs`; IET needs no padding, so this is the size the network runs at)."""
        return iet_macs(self.cfg, self.upscale, height, width, convention)["total"]

    def set_dilation(self, dilation: int | None) -> None:
        """Use ``dilation`` for every later forward (None: train_dilation / eval_dilation by mode)."""
        if dilation is not None and (not isinstance(dilation, int) or dilation < 1):
            raise ValueError(f"dilation must be a positive int or None, got {dilation!r}")
        self.dilation = dilation

    def current_dilation(self) -> int:
        """The dilation the next forward uses."""
        if self.dilation is not None:
            return self.dilation
        return self.cfg.train_dilation if self.training else self.cfg.eval_dilation

    def initial_state(self, batch: int, height: int, width: int, dilation: int, device: torch.device) -> IEAState:
        """The first layer's candidates: the DLSG list (shared by the batch and the heads)."""
        index, ids = self._dlsg(height, width, dilation, device, training=self.training)
        n, k = index.shape
        index = index.view(1, 1, n, k).expand(batch, 1, n, k)
        bias_ids = ids.view(1, 1, n, k).expand(batch, 1, n, k) if self.sched.rpb_blocks > 0 else None
        return IEAState(index, None, bias_ids)

    def forward_features(self, x: torch.Tensor, dilation: int) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h, w): the transformer body before ``conv_after_body``."""
        b, _, h, w = x.shape
        t = self.patch_norm(rearrange(x, "b c y x -> b (y x) c"))
        state: IEAState | None = self.initial_state(b, h, w, dilation, x.device)
        for i, block in enumerate(self.blocks):
            assert state is not None
            t, state = block(t, (h, w), state, last_block=i == len(self.blocks) - 1)
        t = self.norm(t)
        return rearrange(t, "b (y x) c -> b c y x", y=h, x=w)

    # contract of sr_models.arbitrary_scale (another upsampler on this body)
    upsampler_modules = ("upsampler",)

    @property
    def feature_dim(self) -> int:
        return self.cfg.embed_dim

    def body_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> (B, embed_dim, h, w): what :meth:`forward` hands its upsampler (mean
        subtraction and img_range included), at the current dilation."""
        mean = self.mean.to(x.dtype)
        f = self.conv_first((x - mean) * self.cfg.img_range)
        return self.conv_after_body(self.forward_features(f, self.current_dilation())) + f

    def forward(self, x: torch.Tensor, dilation: int | None = None) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, 3, h s, w s)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"IET expects an input of shape (B, 3, h, w), got {tuple(x.shape)}")
        d = self.current_dilation() if dilation is None else dilation
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"dilation must be a positive int, got {d!r}")
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.cfg.img_range
        f = self.conv_first(x)
        f = self.conv_after_body(self.forward_features(f, d)) + f
        out = self.upsampler(f)
        return out / self.cfg.img_range + mean


# The defaults before issue 16 (commit da6d399 and earlier), for the error message on an old plain
# state_dict: the first-block bias table then had rpb_table_size(8, 12) = 850 rows.
_LEGACY_DLSG_SAMPLES = 12


def upgrade_checkpoint(
    config: dict[str, Any], state_dict: Mapping[str, Any], from_metadata: bool
) -> tuple[dict[str, Any], str | None]:
    """Rebuild the network an IET checkpoint was trained as (registered with the registry).

    A safetensors file saved before ``expand_ks`` existed (issue 16) stores every other field of
    its resolved config: its ``av_on_selected`` (then False), ``dlsg_samples`` (then 12) and
    ``k_schedule``. Its expansion layers kept their whole list, which is ``expand_ks`` = the K of
    those layers; with that the saved config rebuilds exactly the trained network, and a warning
    says that the defaults have changed since. A plain state_dict (no saved config) whose bias
    table has the old default's 850 rows cannot be rebuilt from today's defaults: a ValueError
    says so in one line.
    """
    if from_metadata and "expand_ks" not in config:
        cfg = dict(config)
        depths = tuple(cfg.get("depths", _IEA_DEFAULTS.depths))
        k_schedule = tuple(cfg.get("k_schedule", _IEA_DEFAULTS.k_schedule))
        n_expand = len(cfg.get("expand_k1", _IEA_DEFAULTS.expand_k1))
        ends = [sum(depths[: b + 1]) - 1 for b in range(n_expand)]
        cfg["expand_ks"] = [k_schedule[e] for e in ends] if len(k_schedule) == sum(depths) else []
        note = (
            "saved before the IET defaults changed (now: output over the kept top-k_s, expansion from a "
            "sparsified set, DLSG 25x25 samples, a wider schedule); it is rebuilt as it was trained "
            f"(av_on_selected={cfg.get('av_on_selected')}, dlsg_samples={cfg.get('dlsg_samples')}, expansion "
            "layers keep their whole list), which differs from a model built with today's defaults"
        )
        return cfg, note
    if not from_metadata:
        local = int(config.get("dlsg_local", _IEA_DEFAULTS.dlsg_local))
        samples = int(config.get("dlsg_samples", _IEA_DEFAULTS.dlsg_samples))
        rpb = state_dict.get("blocks.0.layers.0.attn.rpb")
        old_rows = rpb_table_size(local, _LEGACY_DLSG_SAMPLES)
        if rpb is not None and rpb.shape[0] == old_rows and rpb.shape[0] != rpb_table_size(local, samples):
            raise ValueError(
                f"its first-block bias table has {old_rows} rows, i.e. it was trained with dlsg_samples="
                f"{_LEGACY_DLSG_SAMPLES}, the IET default before issue 16 (now {samples}), and a plain "
                "state_dict does not record the rest of its config (schedule, av_on_selected); load the "
                ".safetensors export of that run instead, which does"
            )
    return config, None


def build_iet(name: str, scale: int, **overrides: Any) -> IET:
    """Resolve the ``name`` preset with ``overrides`` and build the network for ``scale``."""
    cfg = resolve_config(IETConfig, PRESETS[name], overrides, model=name)
    model = IET(cfg, scale)
    model.config = config_dict(cfg)
    return model


@register_model(
    "iet",
    scales=(2, 3, 4),
    description="IET: 8 blocks x 4 IEA layers, 240 channels, 6 heads",
    upgrade_checkpoint=upgrade_checkpoint,
)
def _iet(scale: int, **overrides: Any) -> IET:
    return build_iet("iet", scale, **overrides)


@register_model(
    "iet-light",
    scales=(2, 3, 4),
    description="IET-light: 8 blocks x 3 IEA layers, 54 channels, 3 heads",
    upgrade_checkpoint=upgrade_checkpoint,
)
def _iet_light(scale: int, **overrides: Any) -> IET:
    return build_iet("iet-light", scale, **overrides)


def _conv_macs(cin: int, cout: int, k: int, pixels: int, groups: int = 1) -> int:
    return pixels * cout * (cin // groups) * k * k


def iet_macs(cfg: IETConfig, scale: int, height: int, width: int, convention: str = "full") -> dict[str, int]:
    """Multiply-accumulates of one forward pass on an ``height x width`` LR input, by part.

    ``convention="full"`` counts what the network really does, as torch's FlopCounterMode sees it
    (the tests pin it to the counter on meta tensors): every conv at its real size, every Linear,
    and the sparse attention over every candidate slot (padded or not, as the kernels do): QK is
    ``K * D`` MACs per query and head, AV ``k_s * D`` under the paper's rule (``av_on_selected``;
    ``K * D`` at the last layer or with the all-K rule). Norms, activations, softmax, selection and
    expansion are not counted.

    ``convention="pft"`` is PFT's ``flops()`` (the official PFT-SR code, ``basicsr/archs/pft_arch.py``;
    it counts MACs), the convention of the IET paper's tables, carried over term by term:
    everything at the LR size; ``conv_first`` 27 C per pixel; the patch-embedding LayerNorm C per
    pixel (the other norms are not counted); per layer qkv 3 C^2, attention ``C (K + AV width)``
    (PFT counts QK over its incoming top-k and AV over the kept top-k, exactly our kernels' work),
    proj C^2, the FFN's two Linears ``2 C F``, its depthwise conv ``F k^2`` and LePE ``C k^2`` where
    a layer has it; SF-FFN's head-wise Linear ``2 F^2 / H`` is counted as the Linear it is (PFT has
    no such layer); the block convs 9 C^2; but ``conv_after_body`` as **3 C^2** (PFT writes
    ``3 * embed_dim * embed_dim`` for a 3x3 conv), and of the upsampler only the convs feeding a
    PixelShuffle, all at the LR size (pixelshuffle: ``4 f^2 * 9`` per stage, ``9 f^2 * 9`` at x3;
    ``conv_before_upsample`` and ``conv_last`` are left out), and for "pixelshuffledirect" ``C * 3 * 9``
    (PFT's ``UpsampleOneStep.flops`` omits the s^2 output channels). Returns "total" and the parts.
    """
    if convention not in MAC_CONVENTIONS:
        raise ValueError(f"convention must be one of {MAC_CONVENTIONS}, got {convention!r}")
    pft = convention == "pft"
    n = height * width
    c, heads, hid = cfg.embed_dim, cfg.num_heads, cfg.ffn_hidden
    sched = cfg.schedule()
    parts: dict[str, int] = {}
    parts["conv_first"] = _conv_macs(3, c, 3, n)
    if pft:
        parts["patch_norm"] = n * c
    per_layer_linear = n * (3 * c * c + c * c + c * hid + hid * c + 2 * hid * (hid // heads))
    lepe = sum(0 if p.use_rpb else _conv_macs(c, c, cfg.lepe_kernel, n, groups=c) for p in sched.plans())
    parts["linear"] = per_layer_linear * sched.num_layers
    parts["dwconv"] = lepe + sched.num_layers * _conv_macs(hid, hid, cfg.ffn_kernel, n, groups=hid)
    parts["attention"] = n * c * (sum(sched.k_schedule) + sum(sched.av_widths()))
    parts["block_convs"] = len(cfg.depths) * _conv_macs(c, c, 3, n)
    parts["conv_after_body"] = n * 3 * c * c if pft else _conv_macs(c, c, 3, n)
    if cfg.upsampler == "pixelshuffledirect":
        parts["upsampler"] = n * c * 3 * 9 if pft else _conv_macs(c, 3 * scale * scale, 3, n)
    else:
        f = cfg.num_feat
        stages = [9] if scale == 3 else [4] * int(math.log2(scale))
        if pft:
            parts["upsampler"] = sum(_conv_macs(f, r * f, 3, n) for r in stages)
        else:
            up, px = _conv_macs(c, f, 3, n), n
            for r in stages:
                up += _conv_macs(f, r * f, 3, px)
                px *= r
            parts["upsampler"] = up + _conv_macs(f, 3, 3, px)
    parts["total"] = sum(parts.values())
    return parts


__all__ = ["IET", "MAC_CONVENTIONS", "PRESETS", "IETConfig", "build_iet", "iet_macs"]
