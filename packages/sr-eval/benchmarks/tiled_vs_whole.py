"""Tiled vs whole-image PSNR of a trained model on a benchmark set (the issue's 0.01 dB check).

    uv run python packages/sr-eval/benchmarks/tiled_vs_whole.py --model esc --scale 4 \
        --weights ESC_x4.pth --data-root datasets/ --dataset set14 --tile 128 --tile-overlap 32

Prints the whole-image and tiled mean PSNR/SSIM (Y, crop = scale), their difference and the largest
per-image difference, and writes them as JSON (--json). Exit status 1 if |difference| > --max-diff.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from sr_eval import evaluate_dataset
from sr_eval.inference import DEFAULT_TILE_OVERLAP
from sr_eval.loading import load_model, pick_device


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="esc")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--weights", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", default="set14")
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-diff", type=float, default=0.01, help="allowed |PSNR difference| in dB")
    p.add_argument("--json", dest="json_out")
    a = p.parse_args()

    from sr_data import build_eval_dataset

    device = pick_device(a.device)
    model = load_model(a.model, a.scale, a.weights, device=device)
    ds = build_eval_dataset(a.dataset, root=a.data_root, scale=a.scale)
    common = dict(name=a.dataset, crop_border=a.scale, device=device, precision=a.precision)
    with torch.inference_mode():
        whole = evaluate_dataset(model, ds, **common)
        tiled = evaluate_dataset(model, ds, tile=a.tile, tile_overlap=a.tile_overlap, **common)
    per_image = [abs(w["psnr"] - t["psnr"]) for w, t in zip(whole.per_image, tiled.per_image, strict=True)]
    res = {
        "model": a.model, "scale": a.scale, "dataset": a.dataset, "tile": a.tile, "tile_overlap": a.tile_overlap,
        "precision": a.precision, "device": str(device),
        "whole_psnr": whole.psnr, "tiled_psnr": tiled.psnr, "psnr_diff": tiled.psnr - whole.psnr,
        "whole_ssim": whole.ssim, "tiled_ssim": tiled.ssim, "max_per_image_psnr_diff": max(per_image),
    }
    print(json.dumps(res, indent=2))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if abs(res["psnr_diff"]) <= a.max_diff else 1


if __name__ == "__main__":
    sys.exit(main())
