"""Validation: PSNR/SSIM on the Y channel with crop = scale, sharded over ranks, never deadlocking.

Every rank evaluates images ``rank, rank + world, ...`` with its own (non-DDP) EMA copy, then one
all-reduce sums the metric totals. No rank waits on a collective while another runs a long
validation, so a big validation set cannot trip the NCCL timeout the way rank-0-only validation
(BasicSR) can. A failure on any rank is turned into the same error on every rank.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from sr_train.distributed import DistEnv, all_reduce_sum
from sr_train.errors import TrainError


def center_crop_pair(lr: torch.Tensor, hr: torch.Tensor, size: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``lr`` (3, h, w) to at most ``size`` x ``size`` around its centre and ``hr`` to the aligned
    ``size*scale`` square (aligned: the HR offset is the LR offset times ``scale``)."""
    h, w = lr.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    lr_c = lr[..., top : top + ch, left : left + cw]
    hr_c = hr[..., top * scale : (top + ch) * scale, left * scale : (left + cw) * scale]
    return lr_c, hr_c


@torch.no_grad()
def validate(model: nn.Module, dataset: Dataset, *, scale: int, env: DistEnv, val_cfg: dict[str, Any],
             precision: str = "fp32") -> dict[str, float]:
    """Mean PSNR and SSIM (Y channel, ``crop_border = scale``) of ``model`` over ``dataset``.

    ``dataset`` items are ``{"lr": (3, h, w), "hr": (3, h*s, w*s)}`` float in [0, 1]. Returns
    ``{"psnr": dB, "ssim": float, "images": n}``, identical on every rank. Collective under DDP.
    """
    from sr_eval import psnr, ssim, upscale_tensor

    n_total = len(dataset)  # type: ignore[arg-type]
    if val_cfg.get("max_images"):
        n_total = min(n_total, int(val_cfg["max_images"]))
    was_training = model.training
    model.eval()
    sums = [0.0, 0.0, 0.0]
    error = ""
    try:
        for i in range(env.rank, n_total, env.world_size):
            item = dataset[i]
            lr, hr = item["lr"], item["hr"]
            if val_cfg.get("center_crop"):
                lr, hr = center_crop_pair(lr, hr, int(val_cfg["center_crop"]), scale)
            lr = lr.unsqueeze(0).to(env.device)
            sr = upscale_tensor(model, lr, tile=val_cfg.get("tile"), precision=precision)
            sr = sr.float().cpu().clamp(0, 1)
            hr = hr.unsqueeze(0).float()
            sums[0] += float(psnr(sr, hr, crop_border=scale, y_channel=True))
            sums[1] += float(ssim(sr, hr, crop_border=scale, y_channel=True))
            sums[2] += 1
    except Exception as exc:  # reported on every rank below, so no rank is left waiting
        error = f"validation failed on rank {env.rank}: {type(exc).__name__}: {exc}"
    finally:
        model.train(was_training)
    failed = all_reduce_sum([1.0 if error else 0.0], env)[0] > 0
    if failed:
        raise TrainError(error or "validation failed on another rank")
    total = all_reduce_sum(sums, env)
    n = max(total[2], 1.0)
    return {"psnr": total[0] / n, "ssim": total[1] / n, "images": int(total[2])}
