"""IEA layer: equal to dense / window attention for full / window lists, expansion reachability,
selection order, the slot-indexed bias and the schedule validation. Oracles are plain dense torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("on_selected", [True, False])
def test_full_list_equals_dense_attention(on_selected: bool) -> None:
    torch.manual_seed(0)
    b, c, heads, size = 2, 16, 4, (5, 7)
    n = size[0] * size[1]
    layer = IEAttention(c, heads, _plan(n, 8), av_on_selected=on_selected)
    x = torch.randn(b, n, c)
    # every token lists every token, in a different random order per row (slot order must not matter)
    perm = torch.stack([torch.randperm(n) for _ in range(b * n)]).view(b, 1, n, n)
    out, state, _ = layer(x, size, IEAState(perm))
    q, k, v = _qkv(layer, x)
    p = torch.softmax(q @ k.transpose(-1, -2) * layer.scale, dim=-1)  # dense N x N oracle
    top = p.topk(8, dim=-1)
    if on_selected:  # the paper's rule: dense attention restricted to the top-8, not renormalised
        p = torch.zeros_like(p).scatter(-1, top.indices, top.values)
    ref = layer.proj(rearrange(p @ v + _lepe(layer, v, size), "b h n d -> b n (h d)"))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the kept list is the dense top-8 of each row, sorted; its values are the log-probabilities
    torch.testing.assert_close(state.prior, top.values.log(), rtol=1e-5, atol=1e-5)
    assert torch.equal(state.index, top.indices)


def test_default_output_is_over_the_top_ks_only_not_renormalised() -> None:
    """A case built to separate the two rules: q = 0, so the attention map is exactly the softmax
    of a known prior, and the k_s kept slots hold 55% of the mass."""
    torch.manual_seed(10)
    b, c, heads, size, kk, ks = 1, 8, 2, (4, 4), 6, 2
    n = size[0] * size[1]
    layer = IEAttention(c, heads, _plan(kk, ks, has_prior=True))  # defaults: av_on_selected=True
    assert layer.av_on_selected
    with torch.no_grad():
        layer.qkv.weight[:c].zero_()  # q = 0: logits = prior only
        layer.qkv.bias[:c].zero_()
    index = torch.stack([torch.randperm(n)[:kk] for _ in range(b * heads * n)]).view(b, heads, n, kk)
    # slot masses 0.3, 0.25 (kept), 0.2, 0.12, 0.08, 0.05 (dropped), in a different slot order per row
    mass = torch.tensor([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])
    order = torch.stack([torch.randperm(kk) for _ in range(b * heads * n)]).view(b, heads, n, kk)
    prior = mass[order].log()
    x = torch.randn(b, n, c)
    out, state, _ = layer(x, size, IEAState(index, prior))
    _, _, v = _qkv(layer, x)
    vg = v[0][torch.arange(heads)[:, None, None], index[0]]  # (h, n, kk, d)
    p = mass[order[0]]  # (h, n, kk): the attention map, known exactly
    kept = order[0] < ks  # the slots holding the two largest masses
    extra = _lepe(layer, v, size)

    def project(weights: torch.Tensor) -> torch.Tensor:
        o = torch.einsum("hnk,hnkd->hnd", weights, vg)[None]
        return layer.proj(rearrange(o + extra, "b h n d -> b n (h d)"))

    top_ks = project(p * kept)  # 0.55 of the mass, not renormalised
    all_k = project(p)
    torch.testing.assert_close(out, top_ks, rtol=1e-5, atol=1e-5)
    assert (out - all_k).abs().max() > 1e-2  # the all-K rule gives a clearly different output
    torch.testing.assert_close(state.prior.exp().sum(-1), torch.full((b, heads, n), 0.55), rtol=1e-5, atol=1e-6)
    # the all-K rule remains available as an option and matches its own oracle
    layer.av_on_selected = False
    out_all, _, _ = layer(x, size, IEAState(index, prior))
    torch.testing.assert_close(out_all, all_k, rtol=1e-5, atol=1e-5)


def test_window_list_equals_window_attention() -> None:
    torch.manual_seed(1)
    b, c, heads, win = 1, 12, 3, 4
    hgt, wid = 8, 12
    n = hgt * wid
    layer = IEAttention(c, heads, _plan(win * win, win * win))  # keeps the whole window: no sparsification
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
        if on_selected:  # the paper's rule (as PFT): only the kept top-3, not renormalised
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


def _oracle_probs(layer: IEAttention, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, N, K) attention map of ``layer`` over ``index`` (B, 1 or H, N, K), plain torch."""
    q, k, _ = _qkv(layer, x)
    b, h, n, _ = q.shape
    idx = index.expand(b, h, n, index.shape[-1])
    bi = torch.arange(b)[:, None, None, None]
    hi = torch.arange(h)[None, :, None, None]
    s = torch.einsum("bhnd,bhnkd->bhnk", q, k[bi, hi, idx.clamp_min(0)]) * layer.scale
    return torch.softmax(s.masked_fill(idx < 0, float("-inf")), -1)


@pytest.mark.parametrize("cap", ["none", "tight"])
def test_expansion_output_is_dedup_of_the_sparsified_set_and_its_two_hop(cap: str) -> None:
    """Eq. 4-8 by brute force: I_s = the top-k_s of the layer's map; N1(i) = the top-k1 of I_s(i);
    N2(i) = union over u in N1(i) of the top-k2 of I_s(u); the next list is Dedup(I_s U N2). With the
    cap k_s + k1 k2 nothing is dropped; with a tighter cap I_s stays whole and the two-hop tokens with
    the largest path weight max_u p(i,u) p(u,v) fill the rest."""
    torch.manual_seed(11)
    b, c, heads, size, kk, ks, k1, k2 = 2, 8, 2, (6, 6), 9, 5, 3, 2
    n = size[0] * size[1]
    extra = 3
    k_out = ks + k1 * k2 if cap == "none" else ks + extra
    index = torch.stack([torch.randperm(n)[:kk] for _ in range(b * n)]).view(b, 1, n, kk)
    index[0, 0, 3, 4] = -1  # an empty slot
    layer = IEAttention(c, heads, _plan(kk, ks, expand=(k1, k2, k_out)))
    x = torch.randn(b, n, c)
    out, state, _ = layer(x, size, IEAState(index))
    p = _oracle_probs(layer, x, index).detach()
    assert state.index.shape == (b, heads, n, k_out)
    for bi in range(b):
        for h in range(heads):
            # I_s and A_s of every token of this (image, head), sorted best first
            kept, weight = [], []
            for i in range(n):
                row = sorted(
                    ((float(p[bi, h, i, s_]), int(index[bi, 0, i, s_])) for s_ in range(kk) if index[bi, 0, i, s_] >= 0),
                    reverse=True,
                )[:ks]
                weight.append([w for w, _ in row])
                kept.append([t for _, t in row])
            for i in range(n):
                path: dict[int, float] = {}
                for a, u in enumerate(kept[i][:k1]):
                    for w2, v_ in zip(weight[u][:k2], kept[u][:k2]):
                        if v_ not in kept[i]:
                            path[v_] = max(path.get(v_, 0.0), weight[i][a] * w2)
                got = [int(t) for t in state.index[bi, h, i] if t >= 0]
                assert len(got) == len(set(got)), "duplicates in the expanded list"
                assert got[: len(kept[i])] == kept[i], "the sparsified set must come first, in its order"
                new = got[len(kept[i]) :]
                if cap == "none":
                    assert set(new) == set(path), (bi, h, i)  # exactly Dedup(I_s U N2)
                else:
                    strongest = sorted(path, key=lambda t: (-path[t], t))[:extra]
                    assert new == strongest, (bi, h, i)
    # the output of the expansion layer is over its kept k_s too
    _, _, v = _qkv(layer, x)
    top = p.topk(ks, -1)
    pk = torch.zeros_like(p).scatter(-1, top.indices, top.values)
    vg = v[torch.arange(b)[:, None, None, None], torch.arange(heads)[None, :, None, None], index.expand(b, heads, n, kk).clamp_min(0)]
    o = torch.einsum("bhnk,bhnkd->bhnd", pk, vg)
    ref = layer.proj(rearrange(o + _lepe(layer, v, size), "b h n d -> b n (h d)"))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


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


def test_bias_ids_in_row_chunks_equal_one_pass(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sr_layers.iet_dlsg as mod

    hgt, wid, local, samples, d = 13, 11, 4, 6, 3
    index = sr_kernels.dlsg_index(hgt, wid, local=local, samples=samples, dilation=d)
    whole = dlsg_bias_ids(index, hgt, wid, local=local, samples=samples, dilation=d)
    for chunk in (1, 77, 1000):
        monkeypatch.setattr(mod, "_CHUNK_ROWS_ELEMENTS", chunk)
        assert torch.equal(dlsg_bias_ids(index, hgt, wid, local=local, samples=samples, dilation=d), whole)
        small = dlsg_bias_ids(index.int(), hgt, wid, local=local, samples=samples, dilation=d)
        assert small.dtype == torch.int32 and torch.equal(small.long(), whole)


def test_dlsg_candidates_on_meta_are_shapes_only() -> None:
    gen = DLSGCandidates(local=8, samples=25)
    index, ids = gen(360, 640, 3, torch.device("meta"), training=False)
    assert index.shape == ids.shape == (360 * 640, 689) and index.is_meta and index.dtype == torch.int32


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
        ({"expand_ks": (176, 128, 112)}, "expand_ks has 3 entries"),
        ({"expand_ks": (300, 128, 112, 96)}, r"expand_ks\[0\] = 300"),
        ({"expand_ks": (20, 128, 112, 96)}, "k1=22"),
        ({"expand_ks": (100, 128, 112, 96)}, r"k_schedule\[4\] = 440"),
    ],
)
def test_schedule_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        IEAScheduleConfig(**kwargs)


def test_default_schedule_plans() -> None:
    cfg = IEAScheduleConfig()
    plans = cfg.plans()
    assert len(plans) == 32 and cfg.dlsg_width == 8 * 8 + 25 * 25 == plans[0].k_in
    assert [p.expand for p in plans if p.expand] == [(22, 12, 440), (20, 11, 348), (14, 9, 238), (12, 8, 192)]
    assert [p.index for p in plans if p.expand] == [3, 7, 11, 15]
    # expansion from a real sparsification: k_s < K, and the next K is the full union width k_s + k1 k2
    for p in plans:
        if p.expand:
            k1, k2, k_out = p.expand
            assert p.keep < p.k_in and k_out == p.keep + k1 * k2
    assert [p.keep for p in plans if p.expand] == list(cfg.expand_ks) == [176, 128, 112, 96]
    # K shrinks at every other layer boundary, within and across blocks
    ks = cfg.k_schedule
    assert all(ks[i + 1] < ks[i] for i in range(31) if i not in (3, 7, 11, 15))
    assert all(p.use_rpb == (p.block == 0) for p in plans)
    assert not plans[0].has_prior and not plans[4].has_prior and plans[1].has_prior and not plans[16].has_prior and plans[17].has_prior
    assert cfg.av_on_selected
    assert cfg.av_widths() == (*ks[1:4], 176, *ks[5:8], 128, *ks[9:12], 112, *ks[13:16], 96, *ks[17:], ks[-1])
    assert sum(ks) == 6147 and sum(cfg.av_widths()) == 4776 and cfg.candidate_budget() == 5461.5
    assert IEAScheduleConfig(av_on_selected=False).av_widths() == ks


def test_light_schedule_plans() -> None:
    from sr_layers.iet_schedule import IET_LIGHT_EXPAND_KS, IET_LIGHT_K_SCHEDULE

    cfg = IEAScheduleConfig(
        depths=(3,) * 8, k_schedule=IET_LIGHT_K_SCHEDULE, expand_ks=IET_LIGHT_EXPAND_KS, rpb_shared_heads=True
    )
    plans = cfg.plans()
    assert [p.index for p in plans if p.expand] == [2, 5, 8, 11]
    assert [p.expand for p in plans if p.expand] == [(22, 12, 424), (20, 11, 348), (14, 9, 254), (12, 8, 208)]
    assert all(p.keep < p.k_in for p in plans[:-1])
    assert cfg.candidate_budget() == 4321.5


def _light_chain(backend: str, monkeypatch):  # type: ignore[no-untyped-def]
    """Two IET-light layers (54 channels, 3 heads: head dim 18): the DLSG + shared-bias layer, then
    an expansion layer with a prior. Returns outputs, the lists and the parameter gradients."""
    from sr_kernels.gather_attention import torch_fast

    monkeypatch.setenv("SR_KERNELS_BACKEND", "triton" if backend == "triton" else "torch")
    if backend == "torch-gather":
        monkeypatch.setattr(torch_fast, "DENSE_MAX_KEYS_PER_SLOT_FEATURE", 0.0)
    torch.manual_seed(12)
    hgt, wid, local, samples, d = 7, 9, 3, 3, 2
    n = hgt * wid
    index = sr_kernels.dlsg_index(hgt, wid, local=local, samples=samples, dilation=d)
    ids = dlsg_bias_ids(index, hgt, wid, local=local, samples=samples, dilation=d)
    kk = index.shape[1]
    l1 = IEAttention(54, 3, _plan(kk, 10, use_rpb=True), rpb_rows=rpb_table_size(local, samples), rpb_shared_heads=True)
    l2 = IEAttention(54, 3, _plan(10, 6, expand=(3, 2, 12), has_prior=True))
    assert l1.head_dim == 18
    x = torch.randn(2, n, 54)
    o1, s1, t1 = l1(x, (hgt, wid), IEAState(index.view(1, 1, n, kk).expand(2, 1, n, kk), None, ids.view(1, 1, n, kk).expand(2, 1, n, kk)))
    o2, s2, t2 = l2(x, (hgt, wid), s1)
    g = torch.Generator().manual_seed(13)
    ((o1 * torch.randn(o1.shape, generator=g)).sum() + (o2 * torch.randn(o2.shape, generator=g)).sum()).backward()
    grads = {f"l{i}.{k}": p.grad for i, m in ((1, l1), (2, l2)) for k, p in m.named_parameters()}
    return (o1, o2), (s1.index, s2.index, t1, t2), grads, (l1, x, index, ids)


@pytest.mark.parametrize("backend", ["torch-gather", "triton"])
def test_iet_light_head_dim_18_layers_agree_on_every_backend(backend: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """IET-light's head dim 18: the Triton kernels (interpreter on CPU) and the torch backend's gather
    strategy give what its dense strategy (the CPU default at this size) gives, which matches a plain
    einsum oracle."""
    from sr_kernels._dispatch import interpreter_enabled

    if backend == "triton" and not (torch.cuda.is_available() or interpreter_enabled()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    with monkeypatch.context() as m:
        outs_ref, lists_ref, grads_ref, (l1, x, index, ids) = _light_chain("torch", m)
    # oracle for the first layer: logits with the shared bias, output over the top-10 (the default rule)
    q, k, v = _qkv(l1, x)
    safe = index.clamp_min(0)
    s = torch.einsum("bhnd,bhnkd->bhnk", q, k[:, :, safe]) * l1.scale + l1.rpb[:, 0][ids]
    p = torch.softmax(s.masked_fill(index < 0, float("-inf")), -1)
    top = p.topk(10, -1)
    pk = torch.zeros_like(p).scatter(-1, top.indices, top.values)
    o = torch.einsum("bhnk,bhnkd->bhnd", pk, v[:, :, safe])
    ref = l1.proj(rearrange(o, "b h n d -> b n (h d)"))
    torch.testing.assert_close(outs_ref[0], ref, rtol=1e-5, atol=1e-5)

    outs, lists, grads, _ = _light_chain(backend, monkeypatch)
    for a, e in zip(outs, outs_ref):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    for a, e in zip(lists, lists_ref):
        assert torch.equal(a, e)
    for name, e in grads_ref.items():
        torch.testing.assert_close(grads[name], e, rtol=1e-4, atol=1e-4, msg=lambda s_, name=name: f"{name}: {s_}")


def _fused_vs_composed_chain(use_fused: bool, seed: int, heads: int, head_dim: int, on_selected: bool,
                             shared_bias: bool):  # type: ignore[no-untyped-def]
    """A bias layer on a DLSG list, an expansion layer with a prior and a last layer; returns the
    outputs, the lists handed on and every parameter gradient."""
    torch.manual_seed(seed)
    hgt, wid, local, samples, d = 6, 7, 3, 2, 2
    n, c = hgt * wid, heads * head_dim
    index = sr_kernels.dlsg_index(hgt, wid, local=local, samples=samples, dilation=d)
    ids = dlsg_bias_ids(index, hgt, wid, local=local, samples=samples, dilation=d)
    kk = index.shape[1]
    kw = {"av_on_selected": on_selected}
    l1 = IEAttention(c, heads, _plan(kk, 9, use_rpb=True), rpb_rows=rpb_table_size(local, samples),
                     rpb_shared_heads=shared_bias, **kw)
    l2 = IEAttention(c, heads, _plan(9, 6, expand=(3, 2, 12), has_prior=True), **kw)
    l3 = IEAttention(c, heads, _plan(12, 2), **kw)
    layers = (l1, l2, l3)
    for layer in layers:
        layer.use_fused_op = use_fused
    x = torch.randn(2, n, c)
    state = IEAState(index.view(1, 1, n, kk).expand(2, 1, n, kk), None, ids.view(1, 1, n, kk).expand(2, 1, n, kk))
    outs, lists = [], []
    for i, layer in enumerate(layers):
        o, state_next, top1 = layer(x, (hgt, wid), state, last=i == len(layers) - 1)
        outs.append(o)
        lists.append(top1)
        if state_next is not None:
            lists.append(state_next.index)
            if state_next.bias_ids is not None:
                lists.append(state_next.bias_ids)
        state = state_next
    g = torch.Generator().manual_seed(seed + 1)
    sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs).backward()
    grads = {f"l{i}.{k}": p.grad for i, m in enumerate(layers) for k, p in m.named_parameters()}
    return outs, lists, grads


@pytest.mark.parametrize("backend", ["torch", "triton"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**20), heads=st.sampled_from([1, 2, 3]), head_dim=st.sampled_from([8, 18, 40]),
       on_selected=st.booleans(), shared_bias=st.booleans())
def test_fused_op_layer_equals_the_composition(backend: str, seed: int, heads: int, head_dim: int,
                                              on_selected: bool, shared_bias: bool) -> None:
    """IEAttention on sr_kernels.iea_attention (the default) computes what the unfused composition
    computes: outputs and gradients to fp32 rounding, identical candidate lists (random float inputs:
    exact ties in the probabilities have probability zero), on the torch path and on Triton."""
    import os

    from sr_kernels._dispatch import interpreter_enabled

    if backend == "triton" and not (torch.cuda.is_available() or interpreter_enabled()):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    old = os.environ.get("SR_KERNELS_BACKEND")
    os.environ["SR_KERNELS_BACKEND"] = backend
    try:
        ref = _fused_vs_composed_chain(False, seed, heads, head_dim, on_selected, shared_bias)
        got = _fused_vs_composed_chain(True, seed, heads, head_dim, on_selected, shared_bias)
    finally:
        if old is None:
            os.environ.pop("SR_KERNELS_BACKEND")
        else:
            os.environ["SR_KERNELS_BACKEND"] = old
    for a, e in zip(got[0], ref[0]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    for a, e in zip(got[1], ref[1]):
        assert torch.equal(a, e)
    assert got[2].keys() == ref[2].keys()
    for name, e in ref[2].items():
        torch.testing.assert_close(got[2][name], e, rtol=1e-4, atol=1e-4, msg=lambda s_, name=name: f"{name}: {s_}")
