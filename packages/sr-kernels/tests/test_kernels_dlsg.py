"""dlsg_index: bounds, full local windows, global sampling geometry, counts."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sr_kernels import dlsg_index


@settings(max_examples=20)
@given(h=st.integers(1, 30), w=st.integers(1, 30), local=st.integers(1, 9), samples=st.integers(1, 6),
       dilation=st.integers(1, 4), seed=st.one_of(st.none(), st.integers(0, 2**31 - 1)))
def test_bounds_local_coverage_and_global_exclusion(h, w, local, samples, dilation, seed):
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    idx = dlsg_index(h, w, local=local, samples=samples, dilation=dilation, generator=gen)
    n = h * w
    assert idx.shape == (n, local * local + samples * samples) and idx.dtype == torch.int64
    assert idx.min() >= -1 and idx.max() < n
    loc, glob = idx[:, : local * local], idx[:, local * local :]
    for t in range(n):
        y, x = divmod(t, w)
        lt = [v for v in loc[t].tolist() if v >= 0]
        ys, xs = {v // w for v in lt}, {v % w for v in lt}
        # a full min(local, h) x min(local, w) square of consecutive rows/cols containing the token
        assert len(lt) == len(set(lt)) == min(local, h) * min(local, w)
        assert len(ys) == min(local, h) and max(ys) - min(ys) == len(ys) - 1 and y in ys
        assert len(xs) == min(local, w) and max(xs) - min(xs) == len(xs) - 1 and x in xs
        gt = [v for v in glob[t].tolist() if v >= 0]
        assert len(set(gt)) == len(gt) and not set(gt) & set(lt)


def test_interior_token_count_golden():
    """32x32 grid, local 8, 6 samples, d = 3 (hand count): token (16,16) has a local window of rows and
    cols 12..19; its region starts at 16 - 9 = 7, snapped to 6, so the patch centres are 7, 10, 13, 16, 19,
    22 on each axis; 3 x 3 of them fall inside the local window -> 36 - 9 = 27 global samples."""
    idx = dlsg_index(32, 32, local=8, samples=6, dilation=3)
    row = idx[16 * 32 + 16]
    assert (row[:64] >= 0).sum() == 64
    centres = [7, 10, 13, 16, 19, 22]
    expected = [y * 32 + x if not (12 <= y <= 19 and 12 <= x <= 19) else -1 for y in centres for x in centres]
    assert row[64:].tolist() == expected
    assert (row >= 0).sum() == 91


@settings(max_examples=15)
@given(h=st.integers(4, 24), w=st.integers(4, 24), dilation=st.integers(2, 4), seed=st.integers(0, 2**31 - 1))
def test_random_samples_stay_in_their_patch_and_are_shared(h, w, dilation, seed):
    kwargs = dict(local=3, samples=3, dilation=dilation)
    centre = dlsg_index(h, w, **kwargs)[:, 9:]
    rand = dlsg_index(h, w, generator=torch.Generator().manual_seed(seed), **kwargs)[:, 9:]
    again = dlsg_index(h, w, generator=torch.Generator().manual_seed(seed), **kwargs)[:, 9:]
    assert torch.equal(rand, again)
    both = (centre >= 0) & (rand >= 0)
    c, r = centre[both], rand[both]
    assert torch.equal(c // w // dilation, r // w // dilation)  # same d x d grid patch (rows)
    assert torch.equal(c % w // dilation, r % w // dilation)  # (cols)
    cells = (r // w // dilation) * w + (r % w // dilation)
    for cell in cells.unique():
        assert r[cells == cell].unique().numel() == 1  # one sample per grid patch, shared by all queries


@settings(max_examples=15)
@given(
    h=st.integers(1, 30), w=st.integers(1, 30), local=st.integers(1, 8), samples=st.integers(1, 25),
    dilation=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), chunk=st.sampled_from([1, 97, 5000]),
)
def test_row_chunking_does_not_change_the_list(h, w, local, samples, dilation, seed, chunk):
    """The list is built a few rows at a time (bounded temporaries); any chunk size gives the list
    of one whole-image pass (chunk = 1 << 40), with and without a generator."""
    import sr_kernels.dlsg as mod

    def build(chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
        old = mod._CHUNK_ELEMENTS
        mod._CHUNK_ELEMENTS = chunk_elements
        try:
            fixed = dlsg_index(h, w, local=local, samples=samples, dilation=dilation)
            rand = dlsg_index(h, w, local=local, samples=samples, dilation=dilation,
                              generator=torch.Generator().manual_seed(seed))
        finally:
            mod._CHUNK_ELEMENTS = old
        return fixed, rand

    whole, chunked = build(1 << 40), build(chunk)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
