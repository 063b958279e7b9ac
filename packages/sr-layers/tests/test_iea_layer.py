"""IEA layer: equal to dense / window attention for full / window lists, expansion reachability,
selection order, the slot-indexed bias and the schedule validation. Oracles are plain dense torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import sr_kernels
from sr_layers.iea import IEAState, IEAttention, first_non_self
from sr_layers.iet_dlsg import DLSGCandidates, dlsg_bias_ids, rpb_table_size
from sr_layers.iet_schedule import IEAScheduleConfig, LayerPlan


def _plan(k_in: int, keep: int, *, expand=None, use_rpb=False, has_prior=False) -> LayerPlan:
    return LayerPlan(0, 0, k_in, keep, expand, use_rpb, has_prior)


def _qkv(layer: IEAttention, x: torch.Tensor):
    return rearrange(layer.qkv(x), "b n (t h d) -> t b h n d", t=3, h=layer.num_heads)


def _lepe(layer: IEAttention, v: torch.Tensor, size) -> torch.Tensor:
    img = rearrange(v, "b h (y x) d -> b (h d) y x", y=size[0], x=size[1])
    return rearrange(F.gelu(layer.lepe(img)), "b (h d) y x -> b h (y x) d", h=layer.num_heads)


def test_full_list_equals_dense_attention() -> None:
    torch.manual_seed(0)
    b, c, heads, size = 2, 16, 4, (5, 7)
    n = size[0] * size[1]
    layer = IEAttention(c, heads, _plan(n, 8))
    x = torch.randn(b, n, c)
    # every token lists every token, in a different random order per row (slot order must not matter)
    perm = torch.stack([torch.randperm(n) for _ in range(b * n)]).view(b, 1, n, n)
    out, state, _ = layer(x, size, IEAState(perm))
    q, k, v = _qkv(layer, x)
    p = torch.softmax(q @ k.transpose(-1, -2) * layer.scale, dim=-1)  # dense N x N oracle
    ref = layer.proj(rearrange(p @ v + _lepe(layer, v, size), "b h n d -> b n (h d)"))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the kept list is the dense top-8 of each row, sorted; its values are the log-probabilities
    top = p.topk(8, dim=-1)
    torch.testing.assert_close(state.prior, top.values.log(), rtol=1e-5, atol=1e-5)
    assert torch.equal(state.index, top.indices)


def test_window_list_equals_window_attention() -> None:
    torch.manual_seed(1)
    b, c, heads, win = 1, 12, 3, 4
    hgt, wid = 8, 12
    n = hgt * wid
    layer = IEAttention(c, heads, _plan(win * win, 4))
    x = torch.randn(b, n, c)
    tok = torch.arange(n).view(hgt, wid)
    windows = rearrange(tok, "(wy y) (wx x) -> (wy wx) (y x)", y=win, x=win)  # (nW, win^2)
    owner = torch.empty(n, dtype=torch.long)
    owner[windows.flatten()] = torch.arange(windows.numel()) // (win * win)
    index = windows[owner].view(1, 1, n, win * win)
    out, _, _ = layer(x, (hgt, wid), IEAState(index))
    q, k, v = _qkv(layer, x)

    def win_part(t: torch.Tensor) -> torch.Tensor:
        return rearrange(t, "b h (wy y wx x) d -> b h (wy wx) (y x) d", wy=hgt // win, y=win, x=win)

    qw, kw, vw = win_part(q), win_part(k), win_part(v)
    ow = torch.softmax(qw @ kw.transpose(-1, -2) * layer.scale, dim=-1) @ vw
    o = rearrange(ow, "b h (wy wx) (y x) d -> b h (wy y wx x) d", wy=hgt // win, y=win, x=win)
    ref = layer.proj(rearrange(o + _lepe(layer, v, (hgt, wid)), "b h n d -> b n (h d)"))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_prior_is_added_to_the_logits_and_av_on_selected() -> None:
    torch.manual_seed(2)
    b, c, heads, size, kk = 1, 8, 2, (4, 5), 6
    n = size[0] * size[1]
    index = torch.stack([torch.randperm(n)[:kk] for _ in range(b * heads * n)]).view(b, heads, n, kk)
    prior = torch.log_softmax(torch.randn(b, heads, n, kk), -1)
    x = torch.randn(b, n, c)
    for on_selected in (False, True):
        layer = IEAttention(c, heads, _plan(kk, 3, has_prior=True), av_on_selected=on_selected)
        torch.manual_seed(3)
        out, state, _ = layer(x, size, IEAState(index, prior))
        q, k, v = _qkv(layer, x)
        kg = k[0][torch.arange(heads)[:, None, None], index[0]]  # (h, n, kk, d)
        vg = v[0][torch.arange(heads)[:, None, None], index[0]]
        s = torch.einsum("hnd,hnkd->hnk", q[0], kg) * layer.scale + prior[0]
        p = torch.softmax(s, -1)
        if on_selected:  # PFT's rule: only the kept top-3, not renormalised
            top = p.topk(3, -1)
            p = torch.zeros_like(p).scatter(-1, top.indices, top.values)
        o = torch.einsum("hnk,hnkd->hnd", p, vg)[None]
        ref = layer.proj(rearrange(o + _lepe(layer, v, size), "b h n d -> b n (h d)"))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert state.index.shape == (b, heads, n, 3)


def test_expansion_only_adds_two_hop_reachable_tokens() -> None:
    torch.manual_seed(4)
    b, c, heads, size, kk = 2, 8, 2, (6, 6), 5
    n = size[0] * size[1]
    index = torch.stack([torch.randperm(n)[:kk] for _ in range(b * n)]).view(b, 1, n, kk)
    index[0, 0, 3, 4] = -1  # an empty slot
    layer = IEAttention(c, heads, _plan(kk, kk, expand=(3, 2, 12)))
    _, state, _ = layer(torch.randn(b, n, c), size, IEAState(index))
    out = state.index
    assert out.shape == (b, heads, n, 12)
    assert state.prior is None  # "uniform": progressive focusing restarts after an expansion
    for bi in range(b):
        for h in range(heads):
            for i in range(n):
                one_hop = {int(t) for t in index[bi, 0, i] if t >= 0}
                two_hop = {int(t) for u in one_hop for t in index[bi, 0, u] if t >= 0}
                row = [int(t) for t in out[bi, h, i] if t >= 0]
                assert len(row) == len(set(row)), "expanded list has duplicates"
                assert one_hop <= set(row), "expansion dropped a kept token"
                assert set(row) <= one_hop | two_hop, "expansion added a token that is not two hops away"


def test_expansion_kept_prior() -> None:
    torch.manual_seed(5)
    b, c, heads, size, kk = 1, 8, 2, (5, 5), 6
    n = size[0] * size[1]
    index = torch.stack([torch.randperm(n)[:kk] for _ in range(n)]).view(1, 1, n, kk)
    layer = IEAttention(c, heads, _plan(kk, kk, expand=(2, 2, 9)), expansion_prior="kept")
    _, state, _ = layer(torch.randn(b, n, c), size, IEAState(index))
    # the first kk columns are the kept tokens (sorted); their prior is a log-probability row that
    # sums to one; the other columns carry the weakest kept value
    kept = state.prior[..., :kk]
    torch.testing.assert_close(kept.exp().sum(-1), torch.ones(b, heads, n), rtol=1e-5, atol=1e-5)
    assert torch.all(kept[..., :-1] >= kept[..., 1:])
    torch.testing.assert_close(state.prior[..., kk:], kept[..., -1:].expand(-1, -1, -1, 9 - kk))


def test_first_non_self() -> None:
    idx = torch.tensor([[[[0, 4, 2], [3, 1, 0], [-1, -1, -1]]]])  # rows are tokens 0, 1, 2
    assert first_non_self(idx).tolist() == [[[4, 3, -1]]]
    assert first_non_self(idx[..., :1]).tolist() == [[[-1, 3, -1]]]


def test_rpb_bias_follows_the_kept_slots() -> None:
    torch.manual_seed(6)
    hgt, wid, local, samples, d = 9, 10, 3, 2, 2
    n = hgt * wid
    index = sr_kernels.dlsg_index(hgt, wid, local=local, samples=samples, dilation=d)
    ids = dlsg_bias_ids(index, hgt, wid, local=local, samples=samples, dilation=d)
    kk = index.shape[1]
    layer = IEAttention(8, 2, _plan(kk, 4, use_rpb=True), rpb_rows=rpb_table_size(local, samples))
    state = IEAState(index.view(1, 1, n, kk), None, ids.view(1, 1, n, kk))
    x = torch.randn(1, n, 8)
    _, out_state, _ = layer(x, (hgt, wid), state)
    q, k, _ = _qkv(layer, x)
    # oracle logits with the bias looked up per head from the table
    safe = index.clamp_min(0)
    s = torch.einsum("hnd,hnkd->hnk", q[0], k[0][:, safe]) * layer.scale + layer.rpb.t()[:, ids]
    s = s.masked_fill(index < 0, float("-inf"))
    top = torch.log_softmax(s, -1).topk(4, -1)
    assert torch.equal(out_state.index[0], torch.gather(index.expand(2, n, kk), -1, top.indices))
    assert torch.equal(out_state.bias_ids[0], torch.gather(ids.expand(2, n, kk), -1, top.indices))


def test_bias_ids_are_offsets_in_dilation_units() -> None:
    hgt, wid = 40, 37
    local, samples = 4, 3
    rows = rpb_table_size(local, samples)
    span, g = 2 * local - 1, samples
    centre = (hgt // 2) * wid + wid // 2
    lists = {}
    for d in (2, 3):
        index = sr_kernels.dlsg_index(hgt, wid, local=local, samples=samples, dilation=d)
        ids = dlsg_bias_ids(index, hgt, wid, local=local, samples=samples, dilation=d)
        assert ids.min() >= 0 and ids.max() < rows  # one table for every dilation
        lists[d] = index[centre]
        for i in (0, centre, hgt * wid - 1, 5 * wid + 30):
            qy, qx = divmod(i, wid)
            for c in range(index.shape[1]):
                if index[i, c] < 0:
                    continue
                ky, kx = divmod(int(index[i, c]), wid)
                row = int(ids[i, c])
                if c < local * local:  # local slot: the pixel offset of the key
                    assert row == (ky - qy + local - 1) * span + (kx - qx + local - 1)
                else:  # global slot: the offset in units of d, up to the cell rounding
                    py, px = divmod(row - span * span, 2 * g + 1)
                    assert abs((ky - qy) - d * (py - g)) < d and abs((kx - qx) - d * (px - g)) < d
    assert not torch.equal(lists[2], lists[3])  # the dilation changes the candidates


def test_dlsg_candidates_cache_and_training_draws() -> None:
    gen = DLSGCandidates(local=3, samples=3)
    a, _ = gen(12, 14, 3, torch.device("cpu"), training=False)
    b, _ = gen(12, 14, 3, torch.device("cpu"), training=False)
    assert a is b  # cached at inference
    assert a.dtype == torch.int32
    for side in range(5, 10):  # the cache is bounded: the oldest sizes are dropped
        gen(side, side, 3, torch.device("cpu"), training=False)
    assert len(gen._cache) == gen.cache_size
    assert gen(12, 14, 3, torch.device("cpu"), training=False)[0] is not a
    assert torch.equal(gen(12, 14, 3, torch.device("cpu"), training=False)[0], a)  # deterministic
    torch.manual_seed(0)
    t1, _ = gen(12, 14, 3, torch.device("cpu"), training=True)
    torch.manual_seed(0)
    t2, _ = gen(12, 14, 3, torch.device("cpu"), training=True)
    assert torch.equal(t1, t2)  # reproducible from the global RNG
    t3, _ = gen(12, 14, 3, torch.device("cpu"), training=True)
    assert not torch.equal(t2, t3)


def test_gradient_flows_through_the_progressive_chain() -> None:
    torch.manual_seed(7)
    b, c, heads, size, kk = 1, 8, 2, (4, 4), 8
    n = size[0] * size[1]
    index = torch.stack([torch.randperm(n)[:kk] for _ in range(n)]).view(1, 1, n, kk)
    l1 = IEAttention(c, heads, _plan(kk, 5))
    l2 = IEAttention(c, heads, _plan(5, 3, has_prior=True))
    x = torch.randn(b, n, c)
    _, state, _ = l1(x, size, IEAState(index))
    out, _, _ = l2(x, size, state)
    out.sum().backward()
    # layer 1's qkv only influences layer 2 through the carried prior (its output is discarded)
    assert l1.qkv.weight.grad is not None and l1.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k_schedule": (208,) * 31}, "k_schedule has 31"),
        ({"k_schedule": (200, *(16,) * 31)}, "DLSG width"),
        ({"expansion_prior": "path"}, "expansion_prior"),
        ({"expand_k1": (22,), "expand_k2": (12, 11)}, "differ in length"),
    ],
)
def test_schedule_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IEAScheduleConfig(**kwargs)


def test_default_schedule_plans() -> None:
    plans = IEAScheduleConfig().plans()
    assert len(plans) == 32
    assert [p.expand for p in plans if p.expand] == [(22, 12, 256), (20, 11, 224), (14, 9, 160), (12, 8, 128)]
    assert [p.index for p in plans if p.expand] == [3, 7, 11, 15]
    assert all(p.use_rpb == (p.block == 0) for p in plans)
    assert not plans[0].has_prior and not plans[4].has_prior and plans[1].has_prior and not plans[16].has_prior and plans[17].has_prior
    assert sum(p.k_in for p in plans) == 3040
