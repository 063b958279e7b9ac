"""iea_attention (the fused IEA layer op) against the unfused composition IEAttention runs.

Oracle: ``iea_attention.reference.iea_attention_reference`` (the composition, on the plain-torch
references, differentiated by autograd); itself checked against the composition of the public ops.

Ties in the top-k selection are handled deliberately: a kept position whose reference log-probability
is within ``TIE`` of a neighbouring candidate may hold either candidate (the two backends sum the logits
in different orders), everywhere else the kept slots must be identical; exact ties (a duplicated token
without bias) go to the lower slot on every backend. When a near-tie straddles the keep boundary the
kept sets differ legitimately, and the gradient comparison is skipped for that example.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import sr_kernels
from sr_kernels._dispatch import interpreter_enabled
from sr_kernels.iea_attention.reference import iea_attention_reference

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
HAS_TRITON_RUNTIME = HAS_CUDA or interpreter_enabled()
needs_triton = pytest.mark.skipif(not HAS_TRITON_RUNTIME, reason="needs CUDA or TRITON_INTERPRET=1")
TIE = 1e-4
NEG_INF = float("-inf")


def _case(seed, b, h, shared, n, m, kk, d, *, p_empty=0.2, dup=True, empty_rows=True, bias=True, prior=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, h, m, d, generator=g)
    v = torch.randn(b, h, m, d, generator=g)
    index = torch.randint(0, m, (b, 1 if shared else h, n, kk), generator=g)
    index[torch.rand(index.shape, generator=g) < p_empty] = -1
    if dup and kk > 2:
        index[..., kk - 1] = index[..., 1]
    if empty_rows:
        index[:, :, ::5] = -1
    bb = torch.randn(b, 1, n, kk, generator=g) if bias else None  # broadcast over heads, like a shared RPB
    pr = torch.randn(b, h, n, kk, generator=g) if prior else None
    if pr is not None and kk > 3:
        pr[..., 3] = NEG_INF  # a slot the prior excludes (a dead slot with a valid index)
    def to(t):
        return (None if t is None else t.to(DEVICE))
    return [to(t) for t in (q, k, v, index, bb, pr)]


def _run(fn, q, k, v, bias, prior, seed):
    """Forward + backward of a random loss over out, lse and kept_logp; returns outputs and gradients."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    bl = bias.clone().requires_grad_() if bias is not None else None
    pl = prior.clone().requires_grad_() if prior is not None else None
    out, lse, kidx, klogp, kslot = fn(*leaves, bl, pl)
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(t.shape, generator=g).to(DEVICE) for t in (out, lse, klogp)]
    loss = (out * w[0]).sum() + (lse.masked_fill(torch.isinf(lse), 0) * w[1]).sum()
    loss = loss + (klogp.masked_fill(torch.isinf(klogp), 0) * w[2]).sum()
    loss.backward()
    grads = [t.grad for t in leaves] + [x.grad for x in (bl, pl) if x is not None]
    return (out.detach(), lse.detach(), kidx, klogp.detach(), kslot), grads


def _finite(x):
    return x.masked_fill(torch.isinf(x), 0.0)


def _compare_selection(ref, got, index, ref_sorted):
    """Kept (index, logp, slot): equal up to tie permutations (see the module docstring). ``ref_sorted``:
    the reference's logp of every slot, sorted best-first (to see near-ties across the keep boundary).
    Returns True when the kept *sets* are equal (then the outputs and gradients must match too)."""
    _, _, _r_idx, r_logp, r_slot = ref
    _, _, g_idx, g_logp, g_slot = got
    assert torch.equal(torch.isneginf(r_logp), torch.isneginf(g_logp))
    torch.testing.assert_close(_finite(g_logp), _finite(r_logp), rtol=1e-5, atol=2e-5)
    # slot/index consistency of the fused output
    b, h, n, kk = index.shape[0], r_logp.shape[1], index.shape[2], index.shape[3]
    full = index.expand(b, h, n, kk)
    assert torch.equal(g_idx.long(), torch.where(g_slot >= 0, full.gather(3, g_slot.clamp_min(0)).long(), -1))
    # positions without a near-tie (to the previous or the next candidate, kept or not) hold the same slot
    keep = r_logp.shape[-1]
    vals = _finite(ref_sorted)
    gap = (vals[..., 1:] - vals[..., :-1]).abs() < TIE
    near = torch.zeros_like(vals, dtype=torch.bool)
    near[..., 1:] |= gap
    near[..., :-1] |= gap
    if keep > kk:
        near = torch.cat([near, near.new_zeros(*near.shape[:-1], keep - kk)], dim=-1)
    near = near[..., :keep]
    assert torch.equal(g_slot[~near], r_slot[~near])
    return torch.equal(g_slot.sort(-1).values, r_slot.sort(-1).values)


def _compare_all(ref, ref_grads, got, got_grads, index, ref_sorted, *, atol=2e-5, gatol=1e-4):
    same_set = _compare_selection(ref, got, index, ref_sorted)
    r_out, r_lse = ref[0], ref[1]
    g_out, g_lse = got[0], got[1]
    assert torch.equal(torch.isneginf(r_lse), torch.isneginf(g_lse))
    torch.testing.assert_close(_finite(g_lse).float(), _finite(r_lse).float(), rtol=1e-5, atol=atol)
    if not same_set:
        return False
    torch.testing.assert_close(g_out.float(), r_out.float(), rtol=1e-4, atol=atol)
    for got_g, want_g in zip(got_grads, ref_grads):
        torch.testing.assert_close(got_g.float(), want_g.float(), rtol=1e-4, atol=gatol)
    return True


def _ref_fn(index, keep, scale, on_sel):
    def fn(q, k, v, bias, prior):
        return iea_attention_reference(q, k, v, index, keep=keep, scale=scale, bias=bias, prior=prior,
                                       av_on_selected=on_sel)
    return fn


def _op_fn(index, keep, on_sel, backend, **kw):
    def fn(q, k, v, bias, prior):
        r = sr_kernels.iea_attention(q, k, v, index, keep=keep, bias=bias, prior=prior, av_on_selected=on_sel,
                                     return_slots=True, backend=backend, **kw)
        return r.out, r.lse, r.kept_index, r.kept_logp, r.kept_slot
    return fn


shapes = dict(
    b=st.integers(1, 2), h=st.integers(1, 3), shared=st.booleans(), n=st.integers(1, 30),
    m=st.integers(1, 40), kk=st.integers(1, 21), d=st.sampled_from([40, 18, 8]),
    keep_frac=st.floats(0.0, 1.2), with_bias=st.booleans(), with_prior=st.booleans(), on_sel=st.booleans(),
    idx32=st.booleans(), seed=st.integers(0, 2**31 - 1),
)


def _ref_sorted(q, k, v, index, bias, prior, d):
    """The reference's logp of every slot, sorted best-first (keep = K)."""
    with torch.no_grad():
        return iea_attention_reference(q, k, v, index, keep=index.shape[-1], scale=d**-0.5, bias=bias,
                                       prior=prior)[3]


def _inputs(b, h, shared, n, m, kk, d, keep_frac, with_bias, with_prior, idx32, seed):
    q, k, v, index, bias, prior = _case(seed, b, h, shared, n, m, kk, d, bias=with_bias, prior=with_prior)
    if idx32:
        index = index.int()
    keep = max(1, min(kk + 2, round(keep_frac * kk)))
    return q, k, v, index, bias, prior, keep


@settings(max_examples=25)
@given(**shapes)
def test_torch_path_matches_the_composition(b, h, shared, n, m, kk, d, keep_frac, with_bias, with_prior, on_sel,
                                            idx32, seed):
    q, k, v, index, bias, prior, keep = _inputs(b, h, shared, n, m, kk, d, keep_frac, with_bias, with_prior,
                                                idx32, seed)
    ref, ref_g = _run(_ref_fn(index, keep, d**-0.5, on_sel), q, k, v, bias, prior, seed)
    got, got_g = _run(_op_fn(index, keep, on_sel, "torch"), q, k, v, bias, prior, seed)
    assert got[2].dtype == index.dtype and got[2].shape == (b, h, n, keep)
    assume(_compare_all(ref, ref_g, got, got_g, index, _ref_sorted(q, k, v, index, bias, prior, d)))


@needs_triton
@settings(max_examples=8)
@given(**shapes, deterministic=st.booleans())
def test_triton_path_matches_the_composition(b, h, shared, n, m, kk, d, keep_frac, with_bias, with_prior, on_sel,
                                             idx32, seed, deterministic):
    q, k, v, index, bias, prior, keep = _inputs(b, h, shared, n, m, kk, d, keep_frac, with_bias, with_prior,
                                                idx32, seed)
    ref, ref_g = _run(_ref_fn(index, keep, d**-0.5, on_sel), q, k, v, bias, prior, seed)
    got, got_g = _run(_op_fn(index, keep, on_sel, "triton", deterministic=deterministic), q, k, v, bias, prior, seed)
    assume(_compare_all(ref, ref_g, got, got_g, index, _ref_sorted(q, k, v, index, bias, prior, d)))


def test_reference_is_the_composition_of_the_public_ops():
    """The oracle is what IEAttention computes with gather_scores / log_softmax / topk_select / gather_values."""
    q, k, v, index, bias, prior = _case(3, 2, 3, True, 19, 23, 13, 40, empty_rows=False)
    keep = 6
    for on_sel in (False, True):
        r = iea_attention_reference(q, k, v, index, keep=keep, scale=40**-0.5, bias=bias, prior=prior,
                                    av_on_selected=on_sel)
        s = sr_kernels.gather_scores(q, k, index, scale=40**-0.5, bias=bias + prior, backend="torch")
        logp = torch.log_softmax(s, dim=-1)
        kept_logp, kept_idx, kept_slot = sr_kernels.topk_select(logp, index, keep, return_slots=True, backend="torch")
        if on_sel:
            out = sr_kernels.gather_values(kept_logp.exp(), v, kept_idx, backend="torch")
        else:
            out = sr_kernels.gather_values(logp.exp(), v, index, backend="torch")
        torch.testing.assert_close(r[0], out)
        torch.testing.assert_close(r[1], torch.logsumexp(s, -1))
        assert torch.equal(r[2], kept_idx) and torch.equal(r[4], kept_slot)
        torch.testing.assert_close(r[3], kept_logp)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_empty_rows_keep_and_padding_contract(backend):
    q, k, v, index, _bias, prior = _case(5, 1, 2, False, 11, 9, 6, 18, empty_rows=False, dup=False, p_empty=0.0)
    index[:, :, 2] = -1  # a row with no slot at all
    prior[:, :, 4] = NEG_INF  # a row whose every slot the prior excludes
    leaves = [t.clone().requires_grad_() for t in (q, k, v, prior)]
    r = sr_kernels.iea_attention(*leaves[:3], index, keep=8, prior=leaves[3], return_slots=True, backend=backend)
    for row in (2, 4):
        assert torch.all(r.out[:, :, row] == 0)
        assert torch.all(torch.isneginf(r.lse[:, :, row]))
        assert torch.all(r.kept_index[:, :, row] == -1) and torch.all(r.kept_slot[:, :, row] == -1)
        assert torch.all(torch.isneginf(r.kept_logp[:, :, row]))
    # keep = 8 > K = 6: the last two columns are empty everywhere
    assert torch.all(r.kept_slot[..., 6:] == -1) and torch.all(r.kept_index[..., 6:] == -1)
    # kept_logp is sorted best first and is a log-probability (sums to <= 0 in prob space)
    lp = r.kept_logp[..., :6]
    assert torch.all(lp[..., :-1] >= lp[..., 1:])
    live_rows = torch.isfinite(r.lse)
    torch.testing.assert_close(lp.exp().sum(-1)[live_rows], torch.ones_like(r.lse)[live_rows], rtol=1e-5, atol=1e-5)
    (r.out.sum() + _finite(r.kept_logp).sum()).backward()
    assert torch.all(leaves[0].grad[:, :, [2, 4]] == 0)
    assert torch.all(leaves[3].grad[:, :, [2, 4]] == 0)


@needs_triton
def test_deterministic_backward_is_reproducible_and_matches_atomics():
    q, k, v, index, bias, prior = _case(7, 1, 2, True, 40, 12, 16, 40)  # few keys: many rows per key
    res = []
    for det in (True, True, False):
        res.append(_run(_op_fn(index, 9, True, "triton", deterministic=det), q, k, v, bias, prior, 1)[1])
    for a, b in zip(res[0], res[1]):
        assert torch.equal(a, b)
    for a, b in zip(res[0], res[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("tiles_2d", [True, False])
def test_tile_union_path_matches_the_gather_path(tiles_2d):
    """A DLSG list, one plan for the batch; max_union = the median union size leaves some tiles to the
    per-query kernel, and a duplicated token in a few rows makes their tiles ineligible too."""
    hh, ww = 10, 11
    dl = sr_kernels.dlsg_index(hh, ww, local=4, samples=3, dilation=2)
    n, kk = dl.shape
    dl[[5, 90], -1] = dl[[5, 90], 0]  # duplicates in two rows
    index = dl.view(1, 1, n, kk).expand(2, 1, n, kk).to(DEVICE)
    size = (hh, ww) if tiles_2d else None
    sizes = (sr_kernels.iea_tile_union(index, image_size=size).tokens >= 0).sum(-1)
    plan = sr_kernels.iea_tile_union(index, image_size=size, max_union=int(sizes.flatten().median()))
    assert plan.tile_list.shape[-1] > 0 and plan.rest_rows.shape[-1] > 0
    assert plan.load_reduction > 2
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, n, 18, generator=g).to(DEVICE) for _ in range(3))
    prior = torch.randn(2, 2, n, kk, generator=g).to(DEVICE)
    for on_sel in (False, True):
        a = sr_kernels.iea_attention(q, k, v, index, keep=9, prior=prior, av_on_selected=on_sel,
                                     return_slots=True, backend="triton", tile_union=plan)
        b = sr_kernels.iea_attention(q, k, v, index, keep=9, prior=prior, av_on_selected=on_sel,
                                     return_slots=True, backend="torch")
        torch.testing.assert_close(a.out, b.out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.lse, b.lse)
        torch.testing.assert_close(a.kept_logp, b.kept_logp)
        assert torch.equal(a.kept_slot, b.kept_slot) and torch.equal(a.kept_index, b.kept_index)


def test_tile_union_plan_contents():
    """Every eligible tile's union holds exactly its queries' tokens, and the maps invert each other."""
    dl = sr_kernels.dlsg_index(9, 13, local=3, samples=3, dilation=2)
    n, kk = dl.shape
    index = dl.view(1, 1, n, kk)
    plan = sr_kernels.iea_tile_union(index, image_size=(9, 13))
    rows = plan.tile_rows[0, 0]
    for t in plan.tile_list[0, 0].tolist():
        r = rows[t][rows[t] >= 0].long()
        toks = plan.tokens[0, 0, t]
        toks = toks[toks >= 0]
        want = torch.unique(dl[r][dl[r] >= 0])
        assert torch.equal(toks.sort().values.long(), want)
        for qi, row in enumerate(rows[t].tolist()):
            if row < 0:
                continue
            up = plan.upos[0, 0, row].long()
            ok = up >= 0
            assert torch.equal(ok, dl[row] >= 0)
            assert torch.equal(plan.tokens[0, 0, t, up[ok]].long(), dl[row][ok])
            smap = plan.slot_map[0, 0, t, qi].long()
            assert torch.equal(smap[up[ok]], torch.arange(kk)[ok])
            assert int((smap >= 0).sum()) == int(ok.sum())
    covered = torch.cat([rows[plan.tile_list[0, 0].long()].reshape(-1), plan.rest_rows[0, 0]])
    assert torch.equal(covered[covered >= 0].sort().values, torch.arange(n, dtype=covered.dtype))


def test_validation_errors_name_the_argument():
    q, k, v, index, _bias, prior = _case(1, 1, 2, True, 5, 7, 4, 8)
    with pytest.raises(ValueError, match="keep"):
        sr_kernels.iea_attention(q, k, v, index, keep=0)
    with pytest.raises(ValueError, match="prior"):
        sr_kernels.iea_attention(q, k, v, index, keep=2, prior=prior[..., :3])
    with pytest.raises(ValueError, match="bias"):
        sr_kernels.iea_attention(q, k, v, index, keep=2, bias=torch.zeros(1, 2, 5, 5))
    with pytest.raises(ValueError, match="index"):
        sr_kernels.iea_attention(q, k, v, index.float(), keep=2)
    with pytest.raises(ValueError, match="av_on_selected"):
        sr_kernels.iea_attention(q, k, v, index, keep=2, av_on_selected=1)
    other = sr_kernels.iea_tile_union(torch.zeros(1, 1, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="tile_union"):
        sr_kernels.iea_attention(q, k, v, index, keep=2, tile_union=other)
    plan = sr_kernels.iea_tile_union(index[:1])
    with pytest.raises(ValueError, match="batch"):
        sr_kernels.iea_attention(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1),
                                 torch.cat([index, index.flip(2)]), keep=2, tile_union=plan)
    with pytest.raises(ValueError, match="image_size"):
        sr_kernels.iea_tile_union(index, image_size=(2, 2))


def test_custom_op_passes_opcheck_and_counts_flops():
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v, index, bias, prior = _case(2, 1, 2, True, 6, 7, 5, 8, empty_rows=False)
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), index, bias, prior.requires_grad_(),
            0.3, 3, True, False, "torch", [])
    result = torch.library.opcheck(torch.ops.sr_kernels.iea_attention_fwd.default, args)
    assert all(status == "SUCCESS" for status in result.values()), result
    sr_kernels.flops.register_flop_formulas()
    with FlopCounterMode(display=False) as counter:
        r = sr_kernels.iea_attention(q, k, v, index, keep=3, bias=bias, prior=prior, av_on_selected=True,
                                     backend="torch")
        r.out.sum().backward()
    total = counter.get_total_flops()
    assert total == (sr_kernels.flops.iea_attention_flops(1, 2, 6, 5, 8, 3)
                     + sr_kernels.flops.iea_attention_backward_flops(1, 2, 6, 5, 8, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("union", [False, True])
def test_bf16_iet_shape_on_gpu(union):
    """bf16 at IET's first layer (64 x 64 LR crop, DLSG K = 208, keep 160, 6 heads, D = 40) against the
    fp32 torch path; selections compared on the fp32 logits of the bf16 inputs (no ties at that size)."""
    hh = ww = 64
    dl = sr_kernels.dlsg_index(hh, ww, local=8, samples=12, dilation=2).cuda()
    n, kk = dl.shape
    index = dl.view(1, 1, n, kk).expand(2, 1, n, kk)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 6, n, 40, generator=g, device="cuda").bfloat16() for _ in range(3))
    prior = torch.randn(2, 6, n, kk, generator=g, device="cuda").log_softmax(-1)
    plan = sr_kernels.iea_tile_union(index, image_size=(hh, ww)) if union else None
    leaves = [t.clone().requires_grad_() for t in (q, k, v, prior)]
    r = sr_kernels.iea_attention(*leaves[:3], index, keep=160, prior=leaves[3], av_on_selected=True,
                                 tile_union=plan)
    (r.out.float().sum() + _finite(r.kept_logp).sum()).backward()
    ref_leaves = [t.float().clone().requires_grad_() for t in (q, k, v, prior)]
    e = sr_kernels.iea_attention(*ref_leaves[:3], index, keep=160, prior=ref_leaves[3], av_on_selected=True,
                                 backend="torch")
    (e.out.sum() + _finite(e.kept_logp).sum()).backward()
    torch.testing.assert_close(r.out.float(), e.out, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(r.lse, e.lse, rtol=1e-3, atol=1e-3)
    agree = (r.kept_index == e.kept_index).float().mean().item()
    assert agree > 0.99, agree
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad.float(), want.grad, rtol=5e-2, atol=5e-2)
