"""Real-ESRGAN's second-order degradation model in torch, on batches, on the training device.

* :func:`degrade` - HR batch ``(B, 3, H, W)`` -> degraded LR batch ``(B, 3, H/s, W/s)``, every random
  draw from a passed ``torch.Generator`` (:mod:`~sr_data.degradations.pipeline`);
* :func:`load_degradation_settings` - a bundled preset (``realesrgan-x4plus``) or a YAML file;
* the stages: :mod:`~sr_data.degradations.kernels` (Gaussian, generalized, plateau, sinc kernels),
  :mod:`~sr_data.degradations.filters` (per-image filtering, USM sharpening),
  :mod:`~sr_data.degradations.noise` (Gaussian / Poisson, colour / gray),
  :mod:`~sr_data.degradations.jpeg` (torch JPEG, Pillow JPEG),
  :mod:`~sr_data.degradations.pool` (Real-ESRGAN's training pair pool).
"""

from sr_data.degradations.filters import filter2d, usm_sharpen
from sr_data.degradations.jpeg import jpeg_pillow, jpeg_torch
from sr_data.degradations.kernels import BlurSettings, random_blur_kernels, random_final_sinc
from sr_data.degradations.pipeline import (
    DegradationSettings,
    PassSettings,
    degrade,
    list_degradation_presets,
    load_degradation_settings,
    settings_from_mapping,
)
from sr_data.degradations.pool import PairPool

__all__ = [
    "BlurSettings", "DegradationSettings", "PairPool", "PassSettings", "degrade", "filter2d", "jpeg_pillow",
    "jpeg_torch", "list_degradation_presets", "load_degradation_settings", "random_blur_kernels",
    "random_final_sinc", "settings_from_mapping", "usm_sharpen",
]
