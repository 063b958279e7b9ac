"""Plain PyTorch gather attention: the readable oracle (the CPU path runs `torch_fast`, checked against it).

Shapes: q (B,H,N,D); k, v (B,H,M,D); index (B,Hi,N,K) integer with Hi in {1, H}, -1 = empty slot;
bias broadcastable to (B,H,N,K); p (B,H,N,K).

For query i with slots c = 0..K-1 and token j = index[i, c]:

    s_ic = scale * q_i . k_j + bias_ic           (-inf when index[i, c] == -1)
    p_ic = softmax_c(s_ic),  lse_i = logsumexp_c(s_ic)
    out_i = sum_c p_ic v_j                        (zeros, lse = -inf, when every slot is empty)

The ``*_reference`` functions are written for clarity with autograd doing the backward. They gather an
N x K x D tensor, which is fine for tests and CPU use. Arithmetic is float32 (float64 for float64
inputs); outputs are cast back to the input dtype, logits stay float32 (float64).

The ``*_backward_torch`` functions are the explicit backward formulas used by the custom ops' CPU
path (and checked against autograd of the references in the tests).
"""

from __future__ import annotations

import torch


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32 (half types are upcast)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _flat_index(index: torch.Tensor, heads: int, empty_row: int) -> torch.Tensor:
    """(B,Hi,N,K) -> (B,H,N*K) int64 with empty slots mapped to ``empty_row`` (expanded over heads)."""
    b, _, n, kk = index.shape
    flat = torch.where(index < 0, empty_row, index.long())
    return flat.expand(b, heads, n, kk).reshape(b, heads, n * kk)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (B,H,M,D) at ``index`` (B,Hi,N,K) -> (B,H,N,K,D); empty slots give zeros.

    Empty slots read an appended zero row (index M), so no mask pass over the N x K x D result is needed.
    """
    b, h, m, d = x.shape
    _, _, n, kk = index.shape
    x_pad = torch.cat([x, x.new_zeros(b, h, 1, d)], dim=2)
    flat = _flat_index(index, h, m)
    return torch.gather(x_pad, 2, flat[..., None].expand(b, h, n * kk, d)).view(b, h, n, kk, d)


def scatter_rows(src: torch.Tensor, index: torch.Tensor, num_keys: int) -> torch.Tensor:
    """Adjoint of :func:`gather_rows`: sum ``src`` (B,H,N,K,D) into (B,H,M,D) rows at ``index``."""
    b, h, n, kk, d = src.shape
    flat = _flat_index(index, h, num_keys)
    out = torch.zeros(b, h, num_keys + 1, d, dtype=src.dtype, device=src.device)
    out.scatter_add_(2, flat[..., None].expand(b, h, n * kk, d), src.reshape(b, h, n * kk, d))
    return out[:, :, :num_keys]


def gather_scores_reference(
    q: torch.Tensor, k: torch.Tensor, index: torch.Tensor, scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits (B,H,N,K), float32 (float64 for float64 inputs), -inf at empty slots."""
    ct = compute_dtype(q, k, bias)
    s = torch.einsum("bhnd,bhnkd->bhnk", q.to(ct), gather_rows(k.to(ct), index)) * scale
    if bias is not None:
        s = s + bias.to(ct)
    return s.masked_fill(index < 0, float("-inf"))


def gather_values_reference(p: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out_i = sum_c p_ic v[index_ic] -> (B,H,N,D) in v's dtype; empty slots contribute nothing."""
    ct = compute_dtype(p, v)
    pm = p.to(ct).masked_fill(index < 0, 0)
    return torch.einsum("bhnk,bhnkd->bhnd", pm, gather_rows(v.to(ct), index)).to(v.dtype)


def safe_softmax(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax and logsumexp over the last dim; rows that are all -inf give p = 0 and lse = -inf."""
    empty = ~(s > float("-inf")).any(dim=-1, keepdim=True)
    s_safe = s.masked_fill(empty, 0.0)
    p = torch.softmax(s_safe, dim=-1).masked_fill(empty, 0.0)
    lse = torch.logsumexp(s_safe, dim=-1).masked_fill(empty[..., 0], float("-inf"))
    return p, lse


def gather_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    scale: float,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B,H,N,D) in q's dtype, lse (B,H,N) float32/float64), differentiable by autograd."""
    s = gather_scores_reference(q, k, index, scale, bias)
    p, lse = safe_softmax(s)
    out = gather_values_reference(p, v.to(s.dtype), index)
    return out.to(q.dtype), lse


# ----------------------------------------------------------------------------------------------
# Explicit backward formulas (used by the custom ops on the torch backend).
# ----------------------------------------------------------------------------------------------


def gather_attention_backward_torch(
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv (in the inputs' dtypes) and ds = dL/d(logits) (B,H,N,K) in the compute dtype.

    p = exp(s - lse); dp_c = dO . v_j; delta = dO . out - dlse; ds = p (dp - delta);
    dq = scale sum_c ds_c k_j; dk_j += scale ds_c q; dv_j += p_c dO.
    """
    ct = compute_dtype(q, k, v, bias)
    m = k.shape[2]
    kg = gather_rows(k.to(ct), index)
    vg = gather_rows(v.to(ct), index)
    qc, do = q.to(ct), grad_out.to(ct)
    s = torch.einsum("bhnd,bhnkd->bhnk", qc, kg) * scale
    if bias is not None:
        s = s + bias.to(ct)
    s = s.masked_fill(index < 0, float("-inf"))
    lse_c = lse.to(ct)
    lse_safe = lse_c.masked_fill(torch.isinf(lse_c), 0.0)
    p = torch.exp(s - lse_safe[..., None]).masked_fill(torch.isinf(lse_c)[..., None], 0.0)
    dp = torch.einsum("bhnd,bhnkd->bhnk", do, vg)
    delta = (do * out.to(ct)).sum(-1)
    if grad_lse is not None:
        delta = delta - grad_lse.to(ct)
    ds = p * (dp - delta[..., None])
    dq = torch.einsum("bhnk,bhnkd->bhnd", ds, kg) * scale
    dk = scatter_rows(ds[..., None] * qc[:, :, :, None, :] * scale, index, m)
    dv = scatter_rows(p[..., None] * do[:, :, :, None, :], index, m)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), ds


def gather_scores_backward_torch(
    grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, index: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """dq (B,H,N,D) and dk (B,H,M,D) for logits = scale q.k[index] (+ bias)."""
    ct = compute_dtype(q, k, grad)
    g = grad.to(ct).masked_fill(index < 0, 0.0)
    dq = torch.einsum("bhnk,bhnkd->bhnd", g, gather_rows(k.to(ct), index)) * scale
    dk = scatter_rows(g[..., None] * q.to(ct)[:, :, :, None, :] * scale, index, k.shape[2])
    return dq.to(q.dtype), dk.to(k.dtype)


def gather_values_backward_torch(
    grad: torch.Tensor, p: torch.Tensor, v: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """dp (B,H,N,K) and dv (B,H,M,D) for out = sum_c p_c v[index_c]; dp = 0 at empty slots."""
    ct = compute_dtype(p, v, grad)
    g = grad.to(ct)
    dp = torch.einsum("bhnd,bhnkd->bhnk", g, gather_rows(v.to(ct), index)).masked_fill(index < 0, 0.0)
    pm = p.to(ct).masked_fill(index < 0, 0.0)
    dv = scatter_rows(pm[..., None] * g[:, :, :, None, :], index, v.shape[2])
    return dp.to(p.dtype), dv.to(v.dtype)
