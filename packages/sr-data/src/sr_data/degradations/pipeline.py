"""Real-ESRGAN's second-order degradation on a batch of HR patches (Wang et al., ICCV-W 2021, section 3).

``degrade(hr, settings, generator)`` turns ``(B, 3, H, W)`` HR images in [0, 1] into
``(B, 3, H / scale, W / scale)`` low-quality images, on hr's device:

1. first pass: blur (per-image random kernel, :mod:`~sr_data.degradations.kernels`); random resize
   (up / down / keep by ``resize_prob``, factor uniform in ``[1, high]`` or ``[low, 1]``, mode uniform
   over ``resize_modes``); Gaussian noise (with probability ``gaussian_noise_prob``) or Poisson noise,
   gray with probability ``gray_noise_prob`` per image, clipped to [0, 1]; JPEG at a per-image quality
   uniform in ``jpeg_range``;
2. second pass: blur with probability ``blur_prob``; resize to ``(H / scale * f, W / scale * f)`` with
   a second random factor ``f``; noise; then, with probability 1/2 each order, either resize to the
   target size + final sinc filter + JPEG, or JPEG + resize + sinc (the final sinc is applied per
   image with probability ``final_sinc_prob``, else an identity kernel);
3. clip to [0, 1] and round to 8-bit levels.

What is drawn per batch and what per image follows Real-ESRGAN's ``RealESRGANModel.feed_data``:
per batch the resize direction, factor and mode (one output size per batch), the noise type, whether
the second blur happens and the final order; per image the kernels, noise strengths, gray flags and
JPEG qualities. Every draw is taken from ``generator`` (a ``torch.Generator`` on hr's device), so a
training run that saves the generator's state redraws exactly the same degradations after a resume.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sr_data.degradations.filters import filter2d
from sr_data.degradations.jpeg import jpeg_pillow, jpeg_torch
from sr_data.degradations.kernels import BlurSettings, random_blur_kernels, random_final_sinc
from sr_data.degradations.noise import gaussian_noise, poisson_noise
from sr_data.errors import DataError

RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic", "nearest")
JPEG_BACKENDS: tuple[str, ...] = ("torch", "pillow")


def _pair(name: str, value: Any, *, positive: bool = True) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2 or not all(isinstance(v, int | float) for v in value):
        raise ValueError(f"{name} must be [low, high], got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if lo > hi or (positive and lo <= 0):
        raise ValueError(f"{name} must be [low, high] with {'0 < ' if positive else ''}low <= high, got {[lo, hi]}")
    return lo, hi


def _prob(name: str, value: Any) -> float:
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PassSettings:
    """One degradation pass (Real-ESRGAN's first or second: ``resize_prob`` / ``resize_prob2`` ...)."""

    blur: BlurSettings = field(default_factory=BlurSettings)
    blur_prob: float = 1.0
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)  # sigma in 8-bit levels
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "gaussian_noise_prob", "gray_noise_prob"):
            _prob(name, getattr(self, name))
        rp = self.resize_prob
        if len(rp) != 3 or any(p < 0 for p in rp) or sum(rp) <= 0:
            raise ValueError(f"resize_prob must be three non-negative weights (up, down, keep), got {list(rp)}")
        lo, hi = self.resize_range
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"resize_range must be [low, high] with 0 < low <= 1 <= high, got {[lo, hi]}")
        lo, hi = self.jpeg_range
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg_range must be [low, high] within [1, 100], got {[lo, hi]}")


@dataclass(frozen=True)
class DegradationSettings:
    """The whole second-order model; :func:`load_degradation_settings` reads it from a preset."""

    scale: int = 4
    first: PassSettings = field(default_factory=PassSettings)
    second: PassSettings = field(default_factory=lambda: PassSettings(
        blur=BlurSettings(sigma_range=(0.2, 1.5)), blur_prob=0.8, resize_prob=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2), noise_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5)))
    final_sinc_prob: float = 0.8
    final_kernel_size: int = 21
    resize_modes: tuple[str, ...] = ("area", "bilinear", "bicubic")
    jpeg_backend: str = "torch"

    def __post_init__(self) -> None:
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale!r}")
        _prob("final_sinc_prob", self.final_sinc_prob)
        if self.final_kernel_size < 7 or self.final_kernel_size % 2 == 0:
            raise ValueError(f"final_kernel_size must be odd and >= 7, got {self.final_kernel_size}")
        bad = [m for m in self.resize_modes if m not in RESIZE_MODES]
        if not self.resize_modes or bad:
            raise ValueError(f"resize_modes must be a non-empty list of {', '.join(RESIZE_MODES)}, got {list(self.resize_modes)}")
        if self.jpeg_backend not in JPEG_BACKENDS:
            raise ValueError(f"jpeg_backend must be one of {', '.join(JPEG_BACKENDS)}, got {self.jpeg_backend!r}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise DataError(f"{where}: must be a mapping, got {data!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "blur":
            value = _build(BlurSettings, value, f"{where}.blur")
        elif key in ("first", "second"):
            value = _build(PassSettings, value, f"{where}.{key}")
        elif key.endswith("_range"):
            try:
                value = _pair(f"{where}.{key}", value)
            except ValueError as exc:
                raise DataError(str(exc)) from None
        elif isinstance(value, list):
            value = tuple(float(v) if isinstance(v, int | float) else v for v in value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{where}: {exc}") from None


def settings_from_mapping(data: Mapping[str, Any], *, where: str = "degradation settings") -> DegradationSettings:
    """A :class:`DegradationSettings` from a nested mapping (a preset's YAML); DataError names the bad key."""
    return _build(DegradationSettings, data, where)


def list_degradation_presets() -> list[str]:
    """Names of the bundled degradation presets (``sr_data/degradations/presets/*.yaml``)."""
    root = importlib.resources.files("sr_data.degradations.presets")
    return sorted(f.name[: -len(".yaml")] for f in root.iterdir() if f.name.endswith(".yaml"))


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def load_degradation_settings(preset: str, overrides: Mapping[str, Any] | None = None) -> DegradationSettings:
    """Read a bundled preset by name (``realesrgan-x4plus``) or a YAML file path, then deep-merge
    ``overrides`` (e.g. ``{"scale": 2, "second": {"blur_prob": 0.5}}``). DataError names the preset,
    file or key at fault."""
    import yaml

    names = list_degradation_presets()
    if preset in names:
        text = (importlib.resources.files("sr_data.degradations.presets") / f"{preset}.yaml").read_text(encoding="utf-8")
        where = f"degradation preset {preset!r}"
    else:
        path = Path(preset)
        if not path.is_file():
            raise DataError(f"degradation preset {preset!r} is neither a bundled preset ({', '.join(names)}) "
                            "nor an existing YAML file")
        text, where = path.read_text(encoding="utf-8"), f"degradation file {str(path)!r}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{where} is not valid YAML: {exc}") from None
    if overrides:
        data = _merge(data, overrides)
    return settings_from_mapping(data, where=where)


# ----------------------------------------------------------------------------- the stages


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + torch.rand(n, generator=generator, device=generator.device) * (hi - lo)


def _choice(n_options: int, generator: torch.Generator, weights: tuple[float, ...] | None = None) -> int:
    dev = generator.device
    if weights is None:
        return int(torch.randint(n_options, (1,), generator=generator, device=dev).item())
    w = torch.tensor(weights, dtype=torch.float64, device=dev)
    return int(torch.multinomial(w, 1, generator=generator).item())


def random_resize_factor(p: PassSettings, generator: torch.Generator) -> float:
    """One resize factor for the batch: up (uniform in [1, high]), down ([low, 1]) or keep (1)."""
    kind = _choice(3, generator, p.resize_prob)
    u = float(torch.rand(1, generator=generator, device=generator.device).item())
    lo, hi = p.resize_range
    return (1 + u * (hi - 1), lo + u * (1 - lo), 1.0)[kind]


def resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``torch.nn.functional.interpolate`` to ``size`` (each side at least 1) in ``mode``, no antialias."""
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if tuple(img.shape[-2:]) == size:
        return img
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(img, size=size, mode=mode, **kw)


def random_noise(img: torch.Tensor, p: PassSettings, generator: torch.Generator) -> torch.Tensor:
    """Gaussian (probability ``p.gaussian_noise_prob``, one choice per batch) or Poisson noise, per-image
    strength and gray flag, then clipped to [0, 1]. ``(B, 3, H, W)`` -> same."""
    b = img.shape[0]
    dev = generator.device
    gaussian = float(torch.rand(1, generator=generator, device=dev).item()) < p.gaussian_noise_prob
    gray = torch.rand(b, generator=generator, device=dev) < p.gray_noise_prob
    if gaussian:
        sigma = _uniform(b, *p.noise_range, generator)
        noise = gaussian_noise(img.shape, sigma, gray, generator)
    else:
        scale = _uniform(b, *p.poisson_scale_range, generator)
        noise = poisson_noise(img, scale, gray, generator)
    return (img + noise.to(img.dtype)).clamp(0, 1)


def jpeg(img: torch.Tensor, quality: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """JPEG at per-image ``quality (B,)`` through ``backend`` (:mod:`~sr_data.degradations.jpeg`)."""
    img = img.clamp(0, 1)
    return jpeg_torch(img, quality) if backend == "torch" else jpeg_pillow(img, quality)


def _check_input(hr: torch.Tensor, settings: DegradationSettings, generator: torch.Generator) -> None:
    if hr.dim() != 4 or hr.shape[1] != 3:
        raise ValueError(f"degrade: hr must be (B, 3, H, W), got {tuple(hr.shape)}")
    if not hr.is_floating_point():
        raise ValueError(f"degrade: hr must be a float tensor in [0, 1], got {hr.dtype}")
    h, w = hr.shape[-2:]
    if h % settings.scale or w % settings.scale:
        raise ValueError(f"degrade: HR size {h}x{w} is not a multiple of scale {settings.scale}")
    if torch.device(generator.device).type != hr.device.type:
        raise ValueError(f"degrade: the generator is on {generator.device} but the images are on {hr.device}; "
                         "pass torch.Generator(device=hr.device)")


def degrade(hr: torch.Tensor, settings: DegradationSettings, generator: torch.Generator) -> torch.Tensor:
    """Real-ESRGAN's second-order degradation (module docstring).

    hr: ``(B, 3, H, W)`` float in [0, 1], H and W multiples of ``settings.scale``; generator: a
    ``torch.Generator`` on hr's device. Returns ``(B, 3, H / scale, W / scale)`` float32 in [0, 1],
    rounded to 8-bit levels.
    """
    _check_input(hr, settings, generator)
    b, _, h, w = hr.shape
    s1, s2, modes, backend = settings.first, settings.second, settings.resize_modes, settings.jpeg_backend
    dev = generator.device
    k1 = random_blur_kernels(b, s1.blur, generator)
    k2 = random_blur_kernels(b, s2.blur, generator)
    sinc = random_final_sinc(b, settings.final_kernel_size, settings.final_sinc_prob, generator)

    out = hr.float()
    # --- first pass
    if float(torch.rand(1, generator=generator, device=dev).item()) < s1.blur_prob:
        out = filter2d(out, k1)
    f = random_resize_factor(s1, generator)
    out = resize(out, (int(h * f), int(w * f)), modes[_choice(len(modes), generator)])
    out = random_noise(out, s1, generator)
    out = jpeg(out, _uniform(b, *s1.jpeg_range, generator), backend)
    # --- second pass
    if float(torch.rand(1, generator=generator, device=dev).item()) < s2.blur_prob:
        out = filter2d(out, k2)
    f = random_resize_factor(s2, generator)
    out = resize(out, (int(h / settings.scale * f), int(w / settings.scale * f)), modes[_choice(len(modes), generator)])
    out = random_noise(out, s2, generator)
    target = (h // settings.scale, w // settings.scale)
    mode = modes[_choice(len(modes), generator)]
    quality = _uniform(b, *s2.jpeg_range, generator)
    if float(torch.rand(1, generator=generator, device=dev).item()) < 0.5:
        out = filter2d(resize(out, target, mode), sinc)
        out = jpeg(out, quality, backend)
    else:
        out = jpeg(out, quality, backend)
        out = filter2d(resize(out, target, mode), sinc)
    return ((out.clamp(0, 1) * 255).round() / 255).to(torch.float32)
