"""Fast PyTorch execution of the gather-attention ops: what the torch backend (CPU) runs.

Same shapes, dtypes and semantics as :mod:`.reference` (which stays the readable oracle): q (B,H,N,D);
k, v (B,H,M,D); index (B,Hi,N,K) integer, Hi in {1, H}, -1 = empty slot; bias broadcastable to
(B,H,N,K); p (B,H,N,K). Empty slots are excluded, a duplicated index is two slots, a row without a valid
slot gives zeros (and zero gradients); arithmetic is float32 (float64 for float64 inputs), logits stay
float32 (float64). Two strategies, picked per call from the shapes by :func:`use_dense`:

* **dense-then-gather** (few keys): the full score map ``S = q @ k^T`` with one matmul, then the K slots of
  every row with ``torch.gather`` on its last dim; the AV half scatters the (B,H,N,K) weights into a
  dense map with ``scatter_add`` (duplicated slots add up) and runs ``P @ v``. Backward likewise with
  dense matmuls: dQ = dS @ k, dK = dS^T @ q, dV = P^T @ dO, dP = gather(dO @ v^T). The maps have one
  extra column M for the empty slots (-inf in S, 0 in dO @ v^T; scattered values there are dropped), so
  no mask pass over (B,H,N,K) is needed. Matmuls are what a CPU does fast; the N x K x D gathered
  tensors of the reference are never built.
* **gather** (many keys): the reference's formulation (rows of k and v gathered into (B,H,N,K,D)),
  trimmed: rows are fetched with one ``index_select`` on a flat row table, empty slots read an appended
  zero row (no mask pass over N x K x D), the scale is folded into the (B,H,N,K) factors before the
  outer products, and the dK / dV scatters go into the same flat row table.

Memory: the dense strategy is used only when ``M <= DENSE_MAX_KEYS_PER_SLOT_FEATURE * K * D``, i.e. when
one dense (B,H,N,M) map is at most half the size of one gathered (B,H,N,K,D) tensor; a pass holds at
most two dense maps at a time, so the peak stays below the gather strategy's O(N K D). Both are bounded
further: the public functions below run the query rows in chunks so that one such temporary (a
(B,H,rows,M+1) map or (B,H,rows,K,D) gathered rows) holds at most ``MAX_TEMP_ELEMENTS`` values (256 MB
in fp32); the outputs are the same (dK / dV are sums over the chunks, so they differ from one pass by
float summation order only). With Hi = 1 the
index is broadcast over heads with ``expand`` views (the flat row ids of the gather strategy are the one
(B,H,N,K) int64 exception, N*K per head, D times smaller than the gathered rows).

Numerics differ from the reference only by float summation order (the dense strategy also multiplies
zero weights with the rows of k / v that no slot references, so a non-finite value in an unreferenced
row of k or v spreads NaN there, where the reference would ignore it).
"""

from __future__ import annotations

import torch

from .reference import compute_dtype

Tensor = torch.Tensor

#: Dense-then-gather is used when ``M <= DENSE_MAX_KEYS_PER_SLOT_FEATURE * K * D``: a dense (B,H,N,M)
#: map is then at most half the size of a gathered (B,H,N,K,D) tensor. At the IET shape (D = 40) that
#: is M <= 20 K: every list of K >= 29 slots over a 24 x 24 LR crop (M = 576) runs dense.
DENSE_MAX_KEYS_PER_SLOT_FEATURE = 0.5


#: Largest temporary (elements) one chunk of query rows may build; see the module docstring.
MAX_TEMP_ELEMENTS = 1 << 26


def use_dense(num_keys: int, slots: int, head_dim: int) -> bool:
    """True when the dense-then-gather strategy runs for M = ``num_keys``, K = ``slots``, D = ``head_dim``."""
    return num_keys <= DENSE_MAX_KEYS_PER_SLOT_FEATURE * slots * head_dim


# ----------------------------------------------------------------------------------------------
# index helpers
# ----------------------------------------------------------------------------------------------


def _slot_ids(index: Tensor, heads: int, num_keys: int) -> Tensor:
    """(B,Hi,N,K) -> slot ids (B,H,N,K) int64 (an ``expand`` view over heads when Hi = 1): the token,
    or ``num_keys`` for an empty slot, i.e. the extra last column of the padded (B,H,N,M+1) maps below.

    Routing empty slots to a column of their own replaces every mask pass over (B,H,N,K): a picked
    entry there is whatever the column holds (-inf for logits, 0 for dP) and a spread value lands there
    and is dropped (the matmuls read columns [0, M) only).
    """
    b, _, n, kk = index.shape
    return torch.where(index < 0, num_keys, index.long()).expand(b, heads, n, kk)


def _pad_row(x: Tensor) -> Tensor:
    """(B,H,M,D) -> (B,H,M+1,D) with a zero last row."""
    return torch.cat([x, x.new_zeros(*x.shape[:2], 1, x.shape[3])], dim=2)


def _dense_map(a: Tensor, b_rows: Tensor, empty_value: float) -> Tensor:
    """a (B,H,N,D) @ [b_rows; 0]^T -> (B,H,N,M+1), last column set to ``empty_value``."""
    dense = a @ _pad_row(b_rows).transpose(-1, -2)
    dense[..., -1] = empty_value
    return dense


def _dense_spread(values: Tensor, slot_ids: Tensor, num_keys: int) -> Tensor:
    """(B,H,N,K) -> (B,H,N,M) view: zeros plus ``values`` added at the slot ids (duplicates add up;
    values at empty slots go to the dropped column M, whatever they are)."""
    b, h, n, _ = values.shape
    dense = values.new_zeros(b, h, n, num_keys + 1)
    return dense.scatter_add_(3, slot_ids, values)[..., :num_keys]


def _flat_rows(index: Tensor, heads: int, num_keys: int) -> Tensor:
    """(B,Hi,N,K) -> (B*H*N*K,) int64 ids into the row table of :func:`_row_table`; empty slots point at
    the zero row of their (b, h) block (its last row)."""
    b = index.shape[0]
    rows = num_keys + 1
    local = torch.where(index < 0, num_keys, index.long())
    base = torch.arange(b * heads, device=index.device, dtype=torch.long).view(b, heads, 1, 1) * rows
    return (local + base).reshape(-1)


def _row_table(x: Tensor) -> Tensor:
    """(B,H,M,D) -> (B*H*(M+1), D): every (b, h) block of rows followed by one zero row."""
    b, h, m, d = x.shape
    return torch.cat([x, x.new_zeros(b, h, 1, d)], dim=2).reshape(b * h * (m + 1), d)


def _gather(x: Tensor, flat: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """Rows of x (B,H,M,D) at the flat ids -> (B,H,N,K,D); empty slots give zeros."""
    b, h, n, kk = shape
    return _row_table(x).index_select(0, flat).view(b, h, n, kk, x.shape[-1])


def _scatter(src: Tensor, flat: Tensor, like: Tensor) -> Tensor:
    """Adjoint of :func:`_gather`: sum ``src`` (B,H,N,K,D) into rows shaped like ``like`` (B,H,M,D)."""
    b, h, m, d = like.shape
    table = src.new_zeros(b * h * (m + 1), d)
    table.scatter_add_(
        0, flat.unsqueeze(-1).expand(-1, d), src.reshape(-1, d)
    )  # faster than index_add_ on CPU
    return table.view(b, h, m + 1, d)[:, :, :m]


# ----------------------------------------------------------------------------------------------
# gather_scores
# ----------------------------------------------------------------------------------------------


def _finish_logits(s: Tensor, bias: Tensor | None, index: Tensor, ct: torch.dtype) -> Tensor:
    """Add the bias to fresh logits (B,H,N,K) and put -inf at the empty slots (in place)."""
    if bias is not None:
        s = s + bias.to(ct)
    return s.masked_fill_(index < 0, float("-inf"))


def _dense_logits(
    qc: Tensor, kc: Tensor, index: Tensor, scale: float, bias: Tensor | None, ct: torch.dtype
) -> Tensor:
    """Dense-then-gather logits (B,H,N,K), -inf at empty slots (read from the -inf column)."""
    s = torch.gather(_dense_map(qc * scale, kc, float("-inf")), 3, _slot_ids(index, qc.shape[1], kc.shape[2]))
    if bias is None:
        return s
    return _finish_logits(s, bias, index, ct)  # a bias could turn the -inf of an empty slot into nan


def _scores_forward_rows(
    q: Tensor,
    k: Tensor,
    index: Tensor,
    scale: float,
    bias: Tensor | None = None,
    *,
    dense: bool | None = None,
) -> Tensor:
    """Logits (B,H,N,K): scale q_i.k[index_ic] + bias_ic, -inf at empty slots; float32 (float64 for
    float64 inputs). ``dense`` forces a strategy (default: :func:`use_dense`)."""
    ct = compute_dtype(q, k, bias)
    b, h, n, d = q.shape
    m, kk = k.shape[2], index.shape[-1]
    qc, kc = q.to(ct), k.to(ct)
    if use_dense(m, kk, d) if dense is None else dense:
        return _dense_logits(qc, kc, index, scale, bias, ct)
    kg = _gather(kc, _flat_rows(index, h, m), (b, h, n, kk))
    return _finish_logits((kg @ qc.unsqueeze(-1)).squeeze(-1) * scale, bias, index, ct)


def _scores_backward_rows(
    grad: Tensor, q: Tensor, k: Tensor, index: Tensor, scale: float, *, dense: bool | None = None
) -> tuple[Tensor, Tensor]:
    """dq (B,H,N,D) and dk (B,H,M,D) (in q's / k's dtypes) for logits = scale q.k[index] (+ bias);
    ``grad`` (B,H,N,K) is ignored at empty slots."""
    ct = compute_dtype(q, k, grad)
    b, h, n, d = q.shape
    m, kk = k.shape[2], index.shape[-1]
    qc, kc = q.to(ct), k.to(ct)
    if use_dense(m, kk, d) if dense is None else dense:
        ds = _dense_spread(grad.to(ct), _slot_ids(index, h, m), m)  # grad at empty slots is dropped
        dq = (ds @ kc).mul_(scale)
        dk = (ds.transpose(-1, -2) @ qc).mul_(scale)
    else:
        g = grad.to(ct).masked_fill(index < 0, 0.0) * scale
        flat = _flat_rows(index, h, m)
        dq = (g.unsqueeze(-2) @ _gather(kc, flat, (b, h, n, kk))).squeeze(-2)
        dk = _scatter(g.unsqueeze(-1) * qc.unsqueeze(-2), flat, kc)
    return dq.to(q.dtype), dk.to(k.dtype)


# ----------------------------------------------------------------------------------------------
# gather_values
# ----------------------------------------------------------------------------------------------


def _values_forward_rows(p: Tensor, v: Tensor, index: Tensor, *, dense: bool | None = None) -> Tensor:
    """out_i = sum_c p_ic v[index_ic] -> (B,H,N,D) in v's dtype; empty slots contribute nothing."""
    ct = compute_dtype(p, v)
    b, h, n, kk = p.shape
    m, d = v.shape[2], v.shape[3]
    vc = v.to(ct)
    if use_dense(m, kk, d) if dense is None else dense:
        out = _dense_spread(p.to(ct), _slot_ids(index, h, m), m) @ vc  # p at empty slots is dropped
    else:
        pm = p.to(ct).masked_fill(index < 0, 0.0)
        out = (pm.unsqueeze(-2) @ _gather(vc, _flat_rows(index, h, m), (b, h, n, kk))).squeeze(-2)
    return out.to(v.dtype)


def _values_backward_rows(
    grad: Tensor, p: Tensor, v: Tensor, index: Tensor, *, dense: bool | None = None
) -> tuple[Tensor, Tensor]:
    """dp (B,H,N,K) (0 at empty slots, p's dtype) and dv (B,H,M,D) (v's dtype) for
    out = sum_c p_c v[index_c]."""
    ct = compute_dtype(p, v, grad)
    b, h, n, kk = p.shape
    m, d = v.shape[2], v.shape[3]
    vc, g = v.to(ct), grad.to(ct)
    if use_dense(m, kk, d) if dense is None else dense:
        slot_ids = _slot_ids(index, h, m)
        dp = torch.gather(_dense_map(g, vc, 0.0), 3, slot_ids)  # 0 at empty slots (the zero column)
        dv = _dense_spread(p.to(ct), slot_ids, m).transpose(-1, -2) @ g
    else:
        empty = index < 0
        pm = p.to(ct).masked_fill(empty, 0.0)
        flat = _flat_rows(index, h, m)
        dp = (_gather(vc, flat, (b, h, n, kk)) @ g.unsqueeze(-1)).squeeze(-1).masked_fill_(empty, 0.0)
        dv = _scatter(pm.unsqueeze(-1) * g.unsqueeze(-2), flat, vc)
    return dp.to(p.dtype), dv.to(v.dtype)


# ----------------------------------------------------------------------------------------------
# gather_attention
# ----------------------------------------------------------------------------------------------


def _softmax_lse(s: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax and logsumexp of fresh logits (B,H,N,K) over the last dim; a row that is all -inf gives
    p = 0 and lse = -inf (like ``reference.safe_softmax``, in two passes over s)."""
    lse = torch.logsumexp(s, dim=-1)
    return (s - _finite_or_zero(lse)[..., None]).exp_(), lse


def _finite_or_zero(lse: Tensor) -> Tensor:
    return lse.masked_fill(torch.isinf(lse), 0.0)


def _attention_forward_rows(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    scale: float,
    bias: Tensor | None = None,
    *,
    dense: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """(out (B,H,N,D) in q's dtype, lse (B,H,N) float32/float64, -inf for rows without a valid slot)."""
    ct = compute_dtype(q, k, v, bias)
    b, h, n, d = q.shape
    m, kk = k.shape[2], index.shape[-1]
    qc, kc, vc = q.to(ct), k.to(ct), v.to(ct)
    if use_dense(m, kk, d) if dense is None else dense:
        p, lse = _softmax_lse(_dense_logits(qc, kc, index, scale, bias, ct))
        out = _dense_spread(p, _slot_ids(index, h, m), m) @ vc
    else:
        flat = _flat_rows(index, h, m)
        kg = _gather(kc, flat, (b, h, n, kk))
        s = _finish_logits((kg @ qc.unsqueeze(-1)).squeeze(-1) * scale, bias, index, ct)
        del kg
        p, lse = _softmax_lse(s)
        del s
        out = (p.unsqueeze(-2) @ _gather(vc, flat, (b, h, n, kk))).squeeze(-2)
    return out.to(q.dtype), lse


def _attention_backward_rows(
    grad_out: Tensor,
    grad_lse: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    bias: Tensor | None,
    out: Tensor,
    lse: Tensor,
    scale: float,
    *,
    dense: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dq, dk, dv (in the inputs' dtypes) and ds = dL/d(logits) (B,H,N,K) in the compute dtype.

    p = exp(s - lse) (0 on rows with lse = +-inf); dp_c = dO . v_j; delta = dO . out - dlse;
    ds = p (dp - delta); dq = scale sum_c ds_c k_j; dk_j += scale ds_c q; dv_j += p_c dO.
    """
    ct = compute_dtype(q, k, v, bias)
    b, h, n, d = q.shape
    m, kk = k.shape[2], index.shape[-1]
    qc, kc, vc, do = q.to(ct), k.to(ct), v.to(ct), grad_out.to(ct)
    lse_c = lse.to(ct)
    dead = torch.isinf(lse_c)[..., None]
    lse_safe = _finite_or_zero(lse_c)[..., None]
    delta = (do * out.to(ct)).sum(-1, keepdim=True)
    if grad_lse is not None:
        delta = delta - grad_lse.to(ct)[..., None]
    if use_dense(m, kk, d) if dense is None else dense:
        slot_ids = _slot_ids(index, h, m)
        p = (_dense_logits(qc, kc, index, scale, bias, ct) - lse_safe).exp_().masked_fill_(dead, 0.0)
        dp = torch.gather(_dense_map(do, vc, 0.0), 3, slot_ids)  # 0 at empty slots
        ds = dp.sub_(delta).mul_(p)
        ds_map = _dense_spread(ds, slot_ids, m)
        dq = (ds_map @ kc).mul_(scale)
        dk = (ds_map.transpose(-1, -2) @ qc).mul_(scale)
        del ds_map
        dv = _dense_spread(p, slot_ids, m).transpose(-1, -2) @ do
    else:
        flat = _flat_rows(index, h, m)
        kg = _gather(kc, flat, (b, h, n, kk))
        s = _finish_logits((kg @ qc.unsqueeze(-1)).squeeze(-1) * scale, bias, index, ct)
        p = s.sub_(lse_safe).exp_().masked_fill_(dead, 0.0)
        dp = (_gather(vc, flat, (b, h, n, kk)) @ do.unsqueeze(-1)).squeeze(-1)
        ds = dp.sub_(delta).mul_(p)
        dss = ds * scale
        dq = (dss.unsqueeze(-2) @ kg).squeeze(-2)
        del kg
        dk = _scatter(dss.unsqueeze(-1) * qc.unsqueeze(-2), flat, kc)
        del dss
        dv = _scatter(p.unsqueeze(-1) * do.unsqueeze(-2), flat, vc)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), ds


# ----------------------------------------------------------------------------------------------
# query-row chunking: the public entry points (what the custom ops call)
# ----------------------------------------------------------------------------------------------


def row_chunk(batch: int, heads: int, num_keys: int, slots: int, head_dim: int, dense: bool | None = None) -> int:
    """Query rows per chunk so that one temporary of the chosen strategy holds <= MAX_TEMP_ELEMENTS."""
    is_dense = use_dense(num_keys, slots, head_dim) if dense is None else dense
    per_row = batch * heads * ((num_keys + 1) if is_dense else max(slots, 1) * head_dim)
    return max(1, MAX_TEMP_ELEMENTS // max(per_row, 1))


def _rows(t: Tensor | None, r: slice) -> Tensor | None:
    """Rows ``r`` of dim 2 of a (.., .., N, ..) tensor; a broadcast dim 2 (size 1) is kept."""
    if t is None or t.dim() < 3 or t.shape[2] == 1:
        return t
    return t[:, :, r]


def _spans(n: int, step: int) -> list[slice]:
    return [slice(r0, min(r0 + step, n)) for r0 in range(0, n, step)]


def scores_forward(
    q: Tensor, k: Tensor, index: Tensor, scale: float, bias: Tensor | None = None, *, dense: bool | None = None
) -> Tensor:
    """Logits (B,H,N,K): scale q_i.k[index_ic] + bias_ic, -inf at empty slots; float32 (float64 for
    float64 inputs). ``dense`` forces a strategy (default: :func:`use_dense`). Row-chunked."""
    b, h, n, d = q.shape
    step = row_chunk(b, h, k.shape[2], index.shape[-1], d, dense)
    if step >= n:
        return _scores_forward_rows(q, k, index, scale, bias, dense=dense)
    return torch.cat([_scores_forward_rows(q[:, :, r], k, index[:, :, r], scale, _rows(bias, r), dense=dense)
                      for r in _spans(n, step)], dim=2)


def scores_backward(
    grad: Tensor, q: Tensor, k: Tensor, index: Tensor, scale: float, *, dense: bool | None = None
) -> tuple[Tensor, Tensor]:
    """dq (B,H,N,D) and dk (B,H,M,D) for logits = scale q.k[index] (+ bias). Row-chunked."""
    b, h, n, d = q.shape
    step = row_chunk(b, h, k.shape[2], index.shape[-1], d, dense)
    if step >= n:
        return _scores_backward_rows(grad, q, k, index, scale, dense=dense)
    dqs, dk = [], None
    for r in _spans(n, step):
        dq_r, dk_r = _scores_backward_rows(grad[:, :, r], q[:, :, r], k, index[:, :, r], scale, dense=dense)
        dqs.append(dq_r)
        dk = dk_r if dk is None else dk.add_(dk_r)
    return torch.cat(dqs, dim=2), dk


def values_forward(p: Tensor, v: Tensor, index: Tensor, *, dense: bool | None = None) -> Tensor:
    """out_i = sum_c p_ic v[index_ic] -> (B,H,N,D) in v's dtype; empty slots contribute nothing.
    Row-chunked."""
    b, h, n, kk = p.shape
    step = row_chunk(b, h, v.shape[2], kk, v.shape[3], dense)
    if step >= n:
        return _values_forward_rows(p, v, index, dense=dense)
    return torch.cat([_values_forward_rows(p[:, :, r], v, index[:, :, r], dense=dense) for r in _spans(n, step)], dim=2)


def values_backward(
    grad: Tensor, p: Tensor, v: Tensor, index: Tensor, *, dense: bool | None = None
) -> tuple[Tensor, Tensor]:
    """dp (B,H,N,K) and dv (B,H,M,D) for out = sum_c p_c v[index_c]. Row-chunked."""
    b, h, n, kk = p.shape
    step = row_chunk(b, h, v.shape[2], kk, v.shape[3], dense)
    if step >= n:
        return _values_backward_rows(grad, p, v, index, dense=dense)
    dps, dv = [], None
    for r in _spans(n, step):
        dp_r, dv_r = _values_backward_rows(grad[:, :, r], p[:, :, r], v, index[:, :, r], dense=dense)
        dps.append(dp_r)
        dv = dv_r if dv is None else dv.add_(dv_r)
    return torch.cat(dps, dim=2), dv


def attention_forward(
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, scale: float, bias: Tensor | None = None,
    *, dense: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """(out (B,H,N,D) in q's dtype, lse (B,H,N), -inf for rows without a valid slot). Row-chunked."""
    b, h, n, d = q.shape
    step = row_chunk(b, h, k.shape[2], index.shape[-1], d, dense)
    if step >= n:
        return _attention_forward_rows(q, k, v, index, scale, bias, dense=dense)
    parts = [_attention_forward_rows(q[:, :, r], k, v, index[:, :, r], scale, _rows(bias, r), dense=dense)
             for r in _spans(n, step)]
    return torch.cat([o for o, _ in parts], dim=2), torch.cat([lse for _, lse in parts], dim=2)


def attention_backward(
    grad_out: Tensor, grad_lse: Tensor | None, q: Tensor, k: Tensor, v: Tensor, index: Tensor,
    bias: Tensor | None, out: Tensor, lse: Tensor, scale: float, *, dense: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dq, dk, dv and ds = dL/d(logits) (B,H,N,K); see :func:`_attention_backward_rows`. Row-chunked."""
    b, h, n, d = q.shape
    step = row_chunk(b, h, k.shape[2], index.shape[-1], d, dense)
    if step >= n:
        return _attention_backward_rows(grad_out, grad_lse, q, k, v, index, bias, out, lse, scale, dense=dense)
    dqs, dss, dk, dv = [], [], None, None
    for r in _spans(n, step):
        dq_r, dk_r, dv_r, ds_r = _attention_backward_rows(
            grad_out[:, :, r], _rows(grad_lse, r), q[:, :, r], k, v, index[:, :, r], _rows(bias, r),
            out[:, :, r], lse[:, :, r], scale, dense=dense,
        )
        dqs.append(dq_r)
        dss.append(ds_r)
        dk = dk_r if dk is None else dk.add_(dk_r)
        dv = dv_r if dv is None else dv.add_(dv_r)
    return torch.cat(dqs, dim=2), dk, dv, torch.cat(dss, dim=2)
