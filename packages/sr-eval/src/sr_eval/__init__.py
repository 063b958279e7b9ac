"""Metrics, inference helpers, benchmark tables, profiling; the sr-eval and sr-upscale commands.

Public API:

* :func:`psnr`, :func:`ssim` - BasicSR/paper-exact metrics (numpy HWC or torch (B)CHW inputs);
  :func:`mean_score` - the dataset score (mean of per-image values);
* :func:`upscale_tensor` - pad policy, tiling, x8 self-ensemble and fp32/bf16/fp16 with NaN guard;
  :func:`forward_padded`, :func:`forward_tiled`, :func:`ensemble_x8`, :func:`upscale_batches`;
* :class:`Upscaler` - memory-bounded upscaling: the peak of each image is estimated from the
  model's measured cost per pixel and the image is tiled when it would not fit (:mod:`sr_eval.memory`);
* :func:`evaluate_dataset` - per-image and mean PSNR/SSIM of a model on an eval dataset;
* :func:`profile_model` - parameters, FLOPs, latency and peak memory.
"""

from sr_eval.benchmark import DatasetResult, evaluate_dataset
from sr_eval.inference import (
    DEFAULT_TILE_OVERLAP,
    PRECISIONS,
    InputTooSmallError,
    PadPolicy,
    PrecisionFallbackWarning,
    ensemble_x8,
    forward_padded,
    forward_tiled,
    pad_policy,
    upscale_batches,
    upscale_tensor,
)
from sr_eval.metrics import mean_score, psnr, psnr_numpy, psnr_torch, ssim, ssim_numpy, ssim_torch
from sr_eval.profiling import profile_model
from sr_eval.runner import Upscaler

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TILE_OVERLAP",
    "PRECISIONS",
    "DatasetResult",
    "InputTooSmallError",
    "PadPolicy",
    "PrecisionFallbackWarning",
    "Upscaler",
    "__version__",
    "ensemble_x8",
    "evaluate_dataset",
    "forward_padded",
    "forward_tiled",
    "mean_score",
    "pad_policy",
    "profile_model",
    "psnr",
    "psnr_numpy",
    "psnr_torch",
    "ssim",
    "ssim_numpy",
    "ssim_torch",
    "upscale_batches",
    "upscale_tensor",
]
