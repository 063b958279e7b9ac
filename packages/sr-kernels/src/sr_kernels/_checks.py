"""Argument validation shared by the ops. Every error is a ValueError that names the argument."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_float(name: str, x: object, ndim: int) -> torch.Tensor:
    """A floating tensor (fp16, bf16, fp32 or fp64) with ``ndim`` dimensions."""
    x = check_tensor(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_same_device(reference: tuple[str, torch.Tensor], *others: tuple[str, torch.Tensor | None]) -> None:
    ref_name, ref = reference
    for name, t in others:
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_index(
    name: str,
    index: object,
    *,
    batch: int,
    heads: int,
    rows: int,
    num_keys: int,
    check_values: bool,
    keys_name: str = "k",
) -> torch.Tensor:
    """Index list of shape (batch, 1 or heads, rows, K>0), integer dtype, values in [-1, num_keys).

    The value check costs one reduction and one host sync; ``check_values=False`` skips it (trusted
    callers). Without it, an out-of-range value on the Triton path reads out of bounds.
    """
    index = check_tensor(name, index)
    if index.dtype not in INDEX_DTYPES:
        raise ValueError(f"{name} must have an integer dtype (int32 or int64 preferred), got {index.dtype}")
    if index.dim() != 4:
        raise ValueError(f"{name} must have 4 dimensions (B, Hi, N, K), got shape {tuple(index.shape)}")
    b, hi, n, kk = index.shape
    if b != batch or n != rows or hi not in (1, heads):
        raise ValueError(
            f"{name} has shape {tuple(index.shape)}; expected ({batch}, 1 or {heads}, {rows}, K)"
        )
    if kk == 0:
        raise ValueError(f"{name} has K = 0 slots per row; K must be at least 1")
    if check_values and index.numel() > 0:
        lo, hi_v = torch.aminmax(index)
        lo_i, hi_i = int(lo), int(hi_v)  # one host sync for both
        if lo_i < -1:
            raise ValueError(f"{name} has value {lo_i} < -1 (only -1 marks an empty slot)")
        if hi_i >= num_keys:
            raise ValueError(
                f"{name} has value {hi_i} >= {num_keys}, the number of keys in {keys_name} (dim 2)"
            )
    return index


def check_bias(bias: object, shape: tuple[int, int, int, int], name: str = "bias") -> torch.Tensor:
    """Additive logits bias broadcastable to ``shape`` = (B, H, N, K) with 4 dims."""
    bias = check_float(name, bias, 4)
    for got, want in zip(bias.shape, shape):
        if got not in (1, want):
            raise ValueError(f"{name} has shape {tuple(bias.shape)}, not broadcastable to {tuple(shape)}")
    return bias


def resolve_scale(scale: object, head_dim: int) -> float:
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale must be a Python number or a one-element tensor, got shape {tuple(scale.shape)}")
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
