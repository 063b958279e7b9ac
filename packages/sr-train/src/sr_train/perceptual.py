"""VGG19 perceptual loss (Real-ESRGAN / BasicSR ``PerceptualLoss``), without torchvision.

:func:`vgg19_features` builds VGG19's convolutional part as a plain ``nn.Sequential`` whose indices
are torchvision's (``features.0`` is conv1_1, ``features.34`` is conv5_4), so torchvision's
``vgg19-dcbb9e9d.pth`` state dict loads into it key for key (``features.N.weight``/``.bias``).

Real-ESRGAN's loss (``train_realesrgan_x4plus.yml``): features *before* the ReLU of conv1_2,
conv2_2, conv3_4, conv4_4, conv5_4 with weights 0.1, 0.1, 1, 1, 1; inputs normalised with the
ImageNet mean and std (``use_input_norm``), no [-1, 1] range mapping; L1 (mean) between the
features of the output and of the (detached) target; the sum is multiplied by the perceptual
weight (1.0). The network is frozen (eval mode, no gradients to its weights).

Weights (``loss.perceptual.weights``): a file path (``.pth``/``.pt`` state dict, e.g. torchvision's,
or ``.safetensors``), ``null`` for torchvision's cache (``<torch hub dir>/checkpoints/vgg19-dcbb9e9d.pth``)
or ``random`` (a seeded random VGG for tests and smoke runs: the loss then means nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sr_train.errors import ConfigError

TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"
SETTING = "loss.perceptual.weights"
# channels per VGG19 block, 2 + 2 + 4 + 4 + 4 convolutions
_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
REALESRGAN_LAYER_WEIGHTS: dict[str, float] = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0,
                                              "conv5_4": 1.0}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_layer_names() -> list[str]:
    """Names of torchvision's ``vgg19().features`` modules by index: conv1_1, relu1_1, conv1_2, ..., pool5."""
    names = []
    for b, (_, n) in enumerate(_BLOCKS, start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return names


def vgg19_features(up_to: str = "pool5") -> nn.Sequential:
    """VGG19's feature layers up to and including ``up_to`` (indices as torchvision's)."""
    names = vgg19_layer_names()
    if up_to not in names:
        raise ConfigError(f"unknown VGG19 layer {up_to!r}; layers: {', '.join(names)}")
    layers: list[nn.Module] = []
    cin = 3
    for cout, n in _BLOCKS:
        for _ in range(n):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=False)]
            cin = cout
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers[: names.index(up_to) + 1])


def _torchvision_cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{SETTING}: cannot read VGG19 weights {str(path)!r}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConfigError(f"{SETTING}: {str(path)!r} does not hold a state dict")
    return dict(state)


def load_vgg_weights(features: nn.Sequential, weights: str | None) -> str:
    """Fill ``features`` from ``weights`` (see the module docstring); returns a description of the source.

    A missing file or tensor is a one-line ConfigError naming the file and the setting.
    """
    if weights == "random":
        g = torch.Generator().manual_seed(0)  # private: building it must not move the training RNG
        with torch.no_grad():
            for m in features:
                if isinstance(m, nn.Conv2d):
                    std = (2.0 / (m.in_channels * 9)) ** 0.5
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * std)
                    m.bias.zero_()
        return "random VGG19 weights (loss.perceptual.weights=random: for tests only)"
    path = _torchvision_cache() if weights is None else Path(weights)
    if not path.is_file():
        where = "torchvision's cache" if weights is None else "the path given"
        raise ConfigError(f"VGG19 weights for the perceptual loss not found: {str(path)!r} ({where}); put torchvision's "
                          f"{TORCHVISION_FILE} there or pass --set {SETTING}=PATH (or {SETTING}=random for a smoke test)")
    state = _read_state(path)
    own = features.state_dict()
    prefixed = any(k.startswith("features.") for k in state)
    picked = {}
    for key in own:
        src = f"features.{key}" if prefixed else key
        if src not in state:
            raise ConfigError(f"{SETTING}: {str(path)!r} has no tensor {src!r}: not VGG19 weights (torchvision layout)")
        if tuple(state[src].shape) != tuple(own[key].shape):
            raise ConfigError(f"{SETTING}: {str(path)!r}: {src!r} has shape {tuple(state[src].shape)}, VGG19 needs "
                              f"{tuple(own[key].shape)}")
        picked[key] = state[src].float()
    features.load_state_dict(picked)
    return f"VGG19 weights from {path}"


class PerceptualLoss(nn.Module):
    """``sum_l w_l * criterion(vgg_l(x), vgg_l(gt))`` over pre-activation VGG19 features (module docstring).

    x, gt: ``(B, 3, H, W)`` float in [0, 1]. Returns a scalar (the layer sum, not yet multiplied by
    the perceptual weight).
    """

    def __init__(self, layer_weights: Mapping[str, float] | None = None, *, weights: str | None = None,
                 criterion: str = "l1", input_norm: bool = True, range_norm: bool = False) -> None:
        super().__init__()
        given = REALESRGAN_LAYER_WEIGHTS if layer_weights is None else layer_weights
        self.layer_weights = {k: float(w) for k, w in given.items() if w}  # weight 0 drops a layer
        names = vgg19_layer_names()
        bad = [k for k in self.layer_weights if k not in names]
        if bad or not self.layer_weights:
            raise ConfigError(f"loss.perceptual.layer_weights: unknown VGG19 layer(s) {bad}; layers: {', '.join(names)}")
        if criterion not in ("l1", "mse"):
            raise ConfigError(f"loss.perceptual.criterion must be l1 or mse, got {criterion!r}")
        self.criterion = F.l1_loss if criterion == "l1" else F.mse_loss
        last = max(self.layer_weights, key=names.index)
        self.features = vgg19_features(last)
        self.source = load_vgg_weights(self.features, weights)
        self.features.eval().requires_grad_(False)
        self._taps = {names.index(k): k for k in self.layer_weights}
        self.input_norm, self.range_norm = input_norm, range_norm
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:  # the VGG stays in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tapped features of ``x (B, 3, H, W)``: {layer name: (B, C_l, H_l, W_l)}."""
        if self.range_norm:
            x = (x + 1) / 2
        if self.input_norm:
            x = (x - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out[self._taps[i]] = x
        return out

    def forward(self, x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        fx = self.extract(x)
        with torch.no_grad():
            fg = self.extract(gt.detach())
        return sum(self.criterion(fx[k], fg[k]) * w for k, w in self.layer_weights.items())  # type: ignore[return-value]
