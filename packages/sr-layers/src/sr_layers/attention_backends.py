"""Attention cores for windowed attention, with interchangeable execution paths.

Two kinds of positional term are supported:

* an additive bias ``(heads, N, N)`` (ESC's relative position bias), via
  :func:`biased_attention` with backends ``"math"`` (explicit softmax), ``"sdpa"`` (PyTorch SDPA with a
  float ``attn_mask``) and ``"flex"`` (``torch.compile``-d FlexAttention with a ``score_mod`` that
  reads the RPB table; CUDA training and inference);
* a low-rank positional term ``P_q P_k^T`` (SST's RIB), via :func:`concat_bias_attention`, which
  concatenates the factors to q and k so that a plain fused kernel computes
  ``q k^T / sqrt(d) + P_q P_k^T / sqrt(r)``. Backends ``"math"``, ``"sdpa"`` (flash/cuDNN on CUDA) and
  ``"fa3"`` (FlashAttention-3's ``flash_attn_interface``, when installed).

``backend="auto"`` picks: for the bias, CUDA -> flex, CPU -> sdpa (PyTorch's fused CPU flash kernel,
which takes the float bias; see below); for RIB, CUDA -> fa3 if installed else sdpa (flash/cuDNN),
CPU -> sdpa (PyTorch's CPU flash kernel, which is what the official code runs on CPU: bit-exact). The
explicit "math" path (the official "Naive" formula, float32 softmax) is always available and is the
readable reference. All paths compute the same mathematics; tests check their agreement on CPU.

The bias on the CPU: torch's fused CPU kernel accepts a float ``attn_mask`` but computes no gradient
for it, so ``F.scaled_dot_product_attention`` silently falls back to its unfused math (a
(windows, heads, N, N) float32 map per step, kept for the backward) whenever the bias requires grad,
i.e. in every training step. :func:`biased_attention` with ``backend="sdpa"`` on CPU therefore runs
the fused kernel for the output and the q/k/v gradients and computes the bias gradient itself, a few
windows at a time (:class:`_FusedBiasAttentionCPU`): no map over all windows exists in the forward or
the backward.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

BIAS_BACKENDS = ("auto", "math", "sdpa", "flex")
RIB_BACKENDS = ("auto", "math", "sdpa", "fa3")
RIB_PRECISIONS = ("bf16", "fp32")


def _check_backend(backend: str, allowed: tuple[str, ...]) -> None:
    if backend not in allowed:
        raise ValueError(f"attention backend must be one of {allowed}, got {backend!r}")


# ----------------------------------------------------------------------------------------------
# Relative position bias (ESC)
# ----------------------------------------------------------------------------------------------


_RPB_INDEX_CACHE: dict[int, torch.Tensor] = {}


def _compute_rpb_index(window: int) -> torch.Tensor:
    coords = torch.arange(window * window)
    ys, xs = coords // window, coords % window
    rel_y = ys[None, :] - ys[:, None] + window - 1  # key minus query
    rel_x = xs[None, :] - xs[:, None] + window - 1
    return rel_y * (2 * window - 1) + rel_x


def rpb_index(window: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Index into a (heads, (2w-1)^2) RPB table for every (query i, key j) pair of a w x w window.

    ``idx[i, j] = (ky - qy + w - 1) * (2w - 1) + (kx - qx + w - 1)`` (key minus query, the transpose
    of Swin's convention). Returns int64 (w*w, w*w).
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if torch.compiler.is_compiling():  # no global cache while tracing
        return _compute_rpb_index(window).to(device)
    idx = _RPB_INDEX_CACHE.get(window)
    if idx is None:
        idx = _RPB_INDEX_CACHE[window] = _compute_rpb_index(window)
    return idx.to(device)


def gather_rpb(table: torch.Tensor, window: int) -> torch.Tensor:
    """Expand an RPB table (heads, (2w-1)^2) to the dense bias (heads, w*w, w*w)."""
    if table.ndim != 2 or table.shape[1] != (2 * window - 1) ** 2:
        raise ValueError(
            f"RPB table must have shape (heads, {(2 * window - 1) ** 2}) for window {window}, "
            f"got {tuple(table.shape)}"
        )
    idx = rpb_index(window, table.device)
    # index_select: its backward is an index_add, much cheaper on the CPU than the sorting
    # index_put of advanced indexing ``table[:, idx]`` (same values)
    n = idx.shape[0]
    return table.index_select(1, idx.reshape(-1)).view(table.shape[0], n, n)


def _math_biased(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores + bias
    return torch.softmax(scores, dim=-1) @ v


# Block size of the bias-gradient pass: at most this many elements in one (windows, heads, rows, N)
# block of the recomputed maps (2 MiB in float32, so that a block stays in a core's cache).
BIAS_GRAD_BLOCK_ELEMENTS = 1 << 19


def _cpu_flash_ops() -> tuple[Callable[..., tuple[torch.Tensor, torch.Tensor]], Callable[..., tuple[torch.Tensor, ...]]] | None:
    """torch's CPU flash-attention forward (returning the log-sum-exp) and backward, or None."""
    aten = torch.ops.aten
    if not (hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu")
            and hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward")):
        return None
    return aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward


class _FusedBiasAttentionCPU(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) + bias) v on the CPU with torch's fused flash kernel, bias gradient included.

    q, k, v: (B', heads, N, d) contiguous, one dtype; bias: (1, heads, N, N) of that dtype. The output
    and dq, dk, dv come from the fused kernel (which saves only the output and the (B', heads, N)
    log-sum-exp). The bias gradient ``sum_b P_b * (dP_b - rowsum(dO_b * O_b))`` is accumulated by
    :func:`_bias_grad` in float32 (float64 for float64 inputs), one cache-sized block at a time, so
    the extra memory is one (heads, N, N) accumulator and two small blocks.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias):  # type: ignore[no-untyped-def]
        fwd, _ = _cpu_flash_ops()  # type: ignore[misc]
        out, lse = fwd(q, k, v, 0.0, False, attn_mask=bias)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[no-untyped-def]
        q, k, v, bias, out, lse = ctx.saved_tensors
        _, bwd = _cpu_flash_ops()  # type: ignore[misc]
        grad_out = grad_out.contiguous()
        dq, dk, dv = bwd(grad_out, q, k, v, out, lse, 0.0, False, attn_mask=bias)
        dbias = None
        if ctx.needs_input_grad[3]:
            acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
            with torch.autocast("cpu", enabled=False):
                dbias = _bias_grad(q, k, v, out, grad_out, lse, bias[0], acc_dtype)
            dbias = dbias.unsqueeze(0).to(bias.dtype)
        return dq, dk, dv, dbias


def _bias_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor,
               lse: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``sum_b P_b * (dP_b - delta_b)`` (heads, N, N) in ``dtype`` for the fused kernel's backward.

    q, k, v, out, grad_out: (B', heads, N, d); lse: (B', heads, N); bias: (heads, N, N).
    ``P = exp(q k^T / sqrt(d) + bias - lse)`` is the kernel's softmax and ``dP - delta = dO v^T -
    rowsum(dO * O)``; both subtractions ride along in the matrix products as one extra column
    (``[q/sqrt(d), -lse] . [k, 1]`` and ``[dO, -delta] . [v, 1]``). The maps are built one block of
    windows and query rows at a time (:data:`BIAS_GRAD_BLOCK_ELEMENTS`) in two reused buffers.
    """
    n, heads, tokens, d = q.shape
    ones = torch.ones(n, heads, tokens, 1, dtype=dtype)
    q_aug = torch.cat([q.to(dtype) * (1.0 / math.sqrt(d)), -lse.to(dtype).unsqueeze(-1)], dim=-1)
    k_aug = torch.cat([k.to(dtype), ones], dim=-1)
    g = grad_out.to(dtype)
    g_aug = torch.cat([g, -(g * out.to(dtype)).sum(-1, keepdim=True)], dim=-1)
    v_aug = torch.cat([v.to(dtype), ones], dim=-1)
    bias = bias.to(dtype)
    if heads * tokens * tokens > BIAS_GRAD_BLOCK_ELEMENTS:
        windows, rows = 1, max(1, BIAS_GRAD_BLOCK_ELEMENTS // (heads * tokens))
    else:
        windows, rows = BIAS_GRAD_BLOCK_ELEMENTS // (heads * tokens * tokens), tokens
    windows = min(windows, n)
    p_buf = torch.empty(windows, heads, rows, tokens, dtype=dtype)
    dp_buf = torch.empty_like(p_buf)
    acc = torch.zeros(heads, tokens, tokens, dtype=dtype)
    for w0 in range(0, n, windows):
        w1 = min(n, w0 + windows)
        for r0 in range(0, tokens, rows):
            r1 = min(tokens, r0 + rows)
            p = p_buf[: w1 - w0, :, : r1 - r0]
            dp = dp_buf[: w1 - w0, :, : r1 - r0]
            torch.matmul(q_aug[w0:w1, :, r0:r1], k_aug[w0:w1].transpose(-2, -1), out=p)
            p.add_(bias[:, r0:r1]).exp_()
            torch.matmul(g_aug[w0:w1, :, r0:r1], v_aug[w0:w1].transpose(-2, -1), out=dp)
            acc[:, r0:r1] += dp.mul_(p).sum(0)
    return acc


def _cpu_biased_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SDPA with a float bias on the CPU: the fused kernel, with the bias gradient when it is needed."""
    bias = bias.to(q.dtype)
    if not (torch.is_grad_enabled() and bias.requires_grad) or _cpu_flash_ops() is None:
        # without a bias gradient torch's own dispatch already runs the fused kernel
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _FusedBiasAttentionCPU.apply(q, k, v, bias.contiguous())


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def rpb_score_mod(table: torch.Tensor, window: int) -> Callable[..., torch.Tensor]:
    """A FlexAttention ``score_mod`` adding ``table[h, idx(q, kv)]`` (key-minus-query index).

    Build it once per layer and reuse it (as the official code does) so that the compiled kernel is
    not re-traced for every call.
    """
    span = 2 * window - 1

    def score_mod(score, b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        rel_y = kv_idx // window - q_idx // window + window - 1
        rel_x = kv_idx % window - q_idx % window + window - 1
        return score + table[h, rel_y * span + rel_x]

    return score_mod


def flex_available() -> bool:
    """True when ``torch.nn.attention.flex_attention`` can be imported (torch >= 2.5)."""
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def biased_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    window: int,
    *,
    backend: str = "auto",
    compile_flex: bool = True,
    score_mod: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + B) v for windowed attention with an ESC relative position bias.

    q, k, v: (B*nW, heads, w*w, d) of one float dtype; ``table``: (heads, (2w-1)^2) with ``B[h, i, j] =
    table[h, rpb_index(w)[i, j]]``. Returns (B*nW, heads, w*w, d) in the dtype of q.
    ``backend="flex"`` on the CPU runs the fused "sdpa" path (FlexAttention has no CPU backward);
    ``compile_flex=False`` forces eager FlexAttention anywhere (unfused and slow; for tests).
    ``backend="sdpa"`` on the CPU uses the fused kernel also when ``table`` requires grad (see the
    module docstring); "auto" is "flex" on CUDA and "sdpa" on the CPU.
    ``score_mod``: a cached :func:`rpb_score_mod` of ``table`` for the flex path (built here when None).
    """
    _check_backend(backend, BIAS_BACKENDS)
    if backend == "auto":
        backend = "flex" if (q.is_cuda and flex_available()) else "sdpa"
    if backend == "flex" and not q.is_cuda and compile_flex:
        # FlexAttention has no CPU backward and runs unfused (a full score map) without a compiled
        # CPU kernel: the fused SDPA path computes the same attention
        backend = "sdpa"
    if backend == "flex":
        if not flex_available():
            backend = "sdpa"
        else:
            if compile_flex and q.is_cuda and not torch.compiler.is_compiling():
                fn = _compiled_flex()  # inside an outer torch.compile the raw op is compiled anyway
            else:
                from torch.nn.attention.flex_attention import flex_attention as fn
            return fn(q, k, v, score_mod=score_mod or rpb_score_mod(table, window))
    bias = gather_rpb(table, window).unsqueeze(0)
    if backend == "sdpa":
        if q.device.type == "cpu":
            return _cpu_biased_sdpa(q, k, v, bias)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
    return _math_biased(q, k, v, bias)


# ----------------------------------------------------------------------------------------------
# Concatenated low-rank bias (SST's RIB recipe)
# ----------------------------------------------------------------------------------------------


def fa3_available() -> bool:
    """True when FlashAttention-3's ``flash_attn_interface`` module is importable."""
    return importlib.util.find_spec("flash_attn_interface") is not None


def _sdpa_flash_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if q.is_cuda:
        major, _ = torch.cuda.get_device_capability(q.device)
        if major < 8 or q.dtype == torch.float32:
            # no bf16 flash/cuDNN kernel here (the official code would raise); any SDPA kernel.
            return F.scaled_dot_product_attention(q, k, v, scale=1.0)
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    else:
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(backends):
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)


def _fa3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn_interface import flash_attn_func  # type: ignore[import-not-found]

    out = flash_attn_func(
        q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(),
        softmax_scale=1.0, causal=False,
    )
    if isinstance(out, tuple):  # some FA3 builds return (out, lse)
        out = out[0]
    return out.transpose(1, 2)


def concat_bias_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_q: torch.Tensor,
    pos_k: torch.Tensor,
    *,
    precision: str = "bf16",
    backend: str = "auto",
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + pos_q pos_k^T / sqrt(r)) v via concatenation (SST's RIB recipe).

    q, k, v: (B', heads, N, d); pos_q, pos_k: (heads, N, r) (broadcast over B'), usually float32.
    ``Q' = [q/sqrt(d), pos_q/sqrt(r)]``, ``K' = [k, pos_k]``, ``V' = [v, 0]``; with
    ``precision="bf16"`` (the official behaviour) these are cast to bfloat16 after scaling, the core runs
    with scale 1 in bf16 and its output is cast back to the dtype of q. ``precision="fp32"`` keeps the
    dtype of q (full precision for fp32 models). The last dim is zero-padded to a multiple of 8.
    Returns (B', heads, N, d) in the dtype of q.
    """
    _check_backend(backend, RIB_BACKENDS)
    if precision not in RIB_PRECISIONS:
        raise ValueError(f"precision must be one of {RIB_PRECISIONS}, got {precision!r}")
    if backend == "auto":
        backend = "fa3" if (q.is_cuda and fa3_available()) else "sdpa"
    if backend == "fa3" and not (q.is_cuda and fa3_available()):
        backend = "sdpa"
    out_dtype = q.dtype
    bsz, heads, n, d = q.shape
    r = pos_q.shape[-1]
    core_dtype = torch.bfloat16 if precision == "bf16" else q.dtype
    if backend == "fa3" and core_dtype == torch.float32:
        backend = "sdpa"  # FA3 has no fp32 path
    pq = (pos_q * (r**-0.5)).to(core_dtype).unsqueeze(0).expand(bsz, -1, -1, -1)
    pk = pos_k.to(core_dtype).unsqueeze(0).expand(bsz, -1, -1, -1)
    q_cat = torch.cat([(q * (d**-0.5)).to(core_dtype), pq], dim=-1)
    k_cat = torch.cat([k.to(core_dtype), pk], dim=-1)
    v_cat = torch.cat([v.to(core_dtype), v.new_zeros((bsz, heads, n, r), dtype=core_dtype)], dim=-1)
    pad = (-(d + r)) % 8
    if pad:
        q_cat, k_cat, v_cat = (F.pad(t, (0, pad)) for t in (q_cat, k_cat, v_cat))
    if backend == "math":
        scores = q_cat.float() @ k_cat.float().transpose(-2, -1)
        out = (torch.softmax(scores, dim=-1) @ v_cat.float()).to(core_dtype)
    elif backend == "fa3":
        out = _fa3(q_cat, k_cat, v_cat)
    else:
        out = _sdpa_flash_cudnn(q_cat.contiguous(), k_cat.contiguous(), v_cat.contiguous())
    return out[..., :d].to(out_dtype)
