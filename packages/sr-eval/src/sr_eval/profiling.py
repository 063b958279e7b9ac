"""Parameters, FLOPs, latency and peak memory of a model at a given output size.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; ``macs`` is
half of it, which is what papers using fvcore call "FLOPs"). Sparse ops of sr_kernels are counted by
their own formulas when sr_kernels registers them with ``register_flop_formula`` or exposes
``sr_kernels.flops.FLOP_FORMULAS`` ({op overload: formula}). The count is taken, in this order:

1. ``meta``: on a meta-device copy of the model (no computation; exact for the full size);
2. ``extrapolated``: if the meta pass fails, on real inputs of a x a, a x 2a and 2a x a LR pixels
   (a a multiple of the pad multiple); if the three counts are exactly proportional to the pixel
   count, the count at the (padded) target size is scaled from them;
3. ``measured``: otherwise one real forward at the full size.

``flops_method`` in the result says which was used. This is the **full count**: what the model
really runs, every conv at its real size.

Papers do not all count that way. The IET and PFT papers' tables use **PFT's ``flops()``
convention** (the hand-written ``flops()`` methods of the official PFT-SR code, which SwinIR's
code introduced): multiply-accumulates at the LR size, ``conv_after_body`` counted as 3 C^2 per
pixel (a 3x3 conv is 9 C^2), of the upsampler only the convs that feed a PixelShuffle, all at the
LR size (the conv before the upsampler and the HR-size last conv left out; the one-step upsampler
as ``C * 3 * 9``), only the patch-embedding LayerNorm, and the attention over the slots its kernels
use. At x2 it is about 2% below the full count of IET, at x4 about 4%. A family that can be
counted that way says so with ``model.mac_conventions`` containing "pft" and ``model.macs(h, w,
"pft")`` (IET and IET-light do); the profile reports it as ``macs_pft_flops`` (None for other
families), at the unpadded LR size, as PFT's ``flops()`` takes it.

Latency uses CUDA events after warm-up (median of repeats); on CPU it is measured only when asked
(wall clock). Peak memory is CUDA-only.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sr_eval.inference import _autocast, model_scale, pad_policy, pad_to_multiple


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _custom_flop_mapping() -> dict:
    try:
        from sr_kernels import flops as kflops  # optional; formulas for the sparse ops
    except Exception:
        return {}
    # FlopCounterMode copies the registry when it is created; on a CPU-only process sr_kernels defers
    # the registration to its first op call, so make sure it has happened before counting.
    register = getattr(kflops, "register_flop_formulas", None)
    if register is not None:
        register()
    return dict(getattr(kflops, "FLOP_FORMULAS", {}) or {})


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add) of ``model(x)`` counted by FlopCounterMode (+ sparse-op formulas)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_custom_flop_mapping()) as counter:
        model(x)
    return int(counter.get_total_flops())


def _flops_meta(model: nn.Module, shape: tuple[int, ...]) -> int:
    meta_model = copy.deepcopy(model).to("meta")
    return count_flops(meta_model, torch.empty(shape, device="meta"))


def flops_at(model: nn.Module, lr_hw: tuple[int, int], *, device: torch.device) -> tuple[int, str]:
    """FLOPs of one padded forward at LR size ``lr_hw`` and the method used (see module docstring)."""
    pol = pad_policy(model)
    m = pol.multiple
    hp, wp = math.ceil(lr_hw[0] / m) * m, math.ceil(lr_hw[1] / m) * m
    try:
        return _flops_meta(model, (1, 3, hp, wp)), "meta"
    except Exception:
        pass
    a = max(m, math.ceil(max(pol.min_size, 32) / m) * m)
    gen = torch.Generator().manual_seed(0)

    def real(h: int, w: int) -> int:
        return count_flops(model, torch.rand(1, 3, h, w, generator=gen).to(device))

    f1, f2, f3 = real(a, a), real(a, 2 * a), real(2 * a, a)
    if f2 == 2 * f1 and f3 == 2 * f1 and (hp * wp) % (a * a) == 0:
        return f1 * (hp * wp) // (a * a), f"extrapolated from {a}x{a} (counts at {a}x{a}, {a}x{2 * a}, {2 * a}x{a} "\
            "are exactly proportional to the pixel count)"
    if f2 == 2 * f1 and f3 == 2 * f1:
        return round(f1 * (hp * wp) / (a * a)), f"extrapolated from {a}x{a} (proportional to the pixel count)"
    return real(hp, wp), "measured (one real forward at the full size)"


FULL_COUNT = (
    "full count: torch FlopCounterMode over the real forward (2 FLOPs per multiply-add; sparse ops by "
    "sr_kernels' formulas, over every slot they run), every conv at its real size"
)
PFT_FLOPS_CONVENTION = (
    "PFT's flops() convention (official PFT-SR code, the convention of the IET/PFT papers' tables): "
    "MACs at the LR size, conv_after_body as 3 C^2 per pixel, only the upsampler convs feeding a "
    "PixelShuffle (at the LR size), only the patch-embedding norm, attention over the kernels' slots"
)


def pft_flops_convention_macs(model: nn.Module, lr_hw: tuple[int, int]) -> int | None:
    """MACs of ``model`` at LR size ``lr_hw`` (unpadded) under PFT's ``flops()`` convention, or None
    when its family defines no such formula (``model.mac_conventions`` lacks "pft")."""
    if "pft" not in tuple(getattr(model, "mac_conventions", ())):
        return None
    return int(model.macs(lr_hw[0], lr_hw[1], "pft"))


def _median_latency_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return float(statistics.median(times))


@torch.no_grad()
def profile_model(
    model: nn.Module,
    *,
    output_size: tuple[int, int],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    warmup: int = 5,
    repeats: int = 20,
    measure_latency: bool | None = None,
    with_flops: bool = True,
) -> dict:
    """Profile ``model`` producing an image of ``output_size`` = (width, height) pixels.

    The LR input is (height // s, width // s), padded by the model's pad policy. Returns a JSON-ready
    dict: params, flops (2 per MAC), macs, flops_method (the full count, see the module docstring),
    macs_pft_flops (PFT's ``flops()`` convention, None where the family has no formula), the
    definitions of both, latency_ms (median; None when not measured), peak_memory_mb (CUDA max
    allocated during one forward, None on CPU), sizes, device and precision.
    ``measure_latency`` defaults to True on CUDA and False on CPU.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    s = model_scale(model)
    out_w, out_h = output_size
    lr_h, lr_w = out_h // s, out_w // s
    if min(lr_h, lr_w) < 1:
        raise ValueError(f"output size {out_w}x{out_h} is smaller than the scale x{s}")
    pol = pad_policy(model)
    x = torch.rand(1, 3, lr_h, lr_w, generator=torch.Generator().manual_seed(0)).to(device)
    xp = pad_to_multiple(x, pol.multiple, pol.mode)
    result: dict = {
        "model": getattr(model, "model_name", type(model).__name__),
        "scale": s,
        "output_size": f"{lr_w * s}x{lr_h * s}",
        "input_size": f"{lr_w}x{lr_h}",
        "padded_input_size": f"{xp.shape[-1]}x{xp.shape[-2]}",
        "params": count_params(model),
        "device": str(device),
        "precision": precision,
        "torch": torch.__version__,
    }
    if with_flops:
        flops, method = flops_at(model, (lr_h, lr_w), device=device)
        result.update(flops=flops, macs=flops // 2, gflops=flops / 1e9, gmacs=flops / 2e9, flops_method=method,
                      macs_definition=FULL_COUNT)
        pft = pft_flops_convention_macs(model, (lr_h, lr_w))
        result.update(
            macs_pft_flops=pft,
            gmacs_pft_flops=None if pft is None else pft / 1e9,
            macs_pft_flops_definition=PFT_FLOPS_CONVENTION if pft is not None
            else f"not defined for {result['model']} (its family has no PFT-convention formula)",
        )

    def fwd() -> torch.Tensor:
        with _autocast(device, precision):
            return model(xp)

    if measure_latency is None:
        measure_latency = device.type == "cuda"
    result["latency_ms"] = _median_latency_ms(fwd, device, warmup, repeats) if measure_latency else None
    result["latency_method"] = (
        None if not measure_latency
        else f"{'CUDA events' if device.type == 'cuda' else 'wall clock'}, median of {repeats} after {warmup} warm-up"
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fwd()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        result["peak_memory_mb"] = peak / 2**20
        result["peak_memory_above_weights_mb"] = (peak - base) / 2**20
    else:
        result["peak_memory_mb"] = None
    return result
