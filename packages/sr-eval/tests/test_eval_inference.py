"""Inference helpers: pad policy, tiling, x8 self-ensemble, precision guard, batching."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sr_eval import (
    InputTooSmallError,
    PrecisionFallbackWarning,
    ensemble_x8,
    forward_padded,
    forward_tiled,
    upscale_batches,
    upscale_tensor,
)
from sr_eval.inference import batches_by_size, pad_to_multiple, tile_starts


class NearestUp(nn.Module):
    """Nearest-neighbour upsampling: equivariant under flips and transposes."""

    def __init__(self, scale: int = 2, pad_multiple: int = 1) -> None:
        super().__init__()
        self.scale, self.pad_multiple = scale, pad_multiple
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class SmallConvSR(nn.Module):
    """Three 3x3 convs (receptive-field radius 3 LR pixels) + pixel shuffle; zero padding."""

    def __init__(self, scale: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 3, padding=1), nn.GELU(),
            nn.Conv2d(8, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _img(b=1, h=37, w=45, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# padding policy
# ------------------------------------------------------------------------------------------------


def test_pad_policy_pads_runs_and_crops():
    m = NearestUp(scale=3, pad_multiple=16).eval()
    x = _img(h=20, w=33)
    y = forward_padded(m, x)
    assert m.seen == [(32, 48)]
    assert y.shape == (1, 3, 60, 99)
    torch.testing.assert_close(y, F.interpolate(x, scale_factor=3, mode="nearest"))


def test_reflect_padding_larger_than_the_image():
    x = _img(h=5, w=3)
    y = pad_to_multiple(x, 32, "reflect")
    assert y.shape[-2:] == (32, 32)
    torch.testing.assert_close(y[..., :5, :3], x)
    torch.testing.assert_close(y[..., 5, :3], x[..., 3, :])  # first reflected row mirrors row h-2
    assert pad_to_multiple(x, 1).data_ptr() == x.data_ptr()


def test_min_input_size_is_enforced():
    m = NearestUp()
    m.min_input_size = 8
    with pytest.raises(InputTooSmallError, match="smaller than the model's minimum side of 8"):
        forward_padded(m, _img(h=7, w=20))


@pytest.mark.parametrize(("shape", "match"), [((3, 8, 8), "shape"), ((1, 4, 8, 8), "3 \\(RGB\\) channels")])
def test_bad_lr_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        forward_padded(NearestUp(), torch.rand(shape))


# ------------------------------------------------------------------------------------------------
# tiling
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "tile", "overlap", "multiple"),
                         [(100, 32, 8, 1), (100, 32, 8, 8), (97, 64, 32, 32), (200, 64, 16, 16), (33, 32, 0, 1)])
def test_tile_starts_cover_with_overlap(length, tile, overlap, multiple):
    starts = tile_starts(length, tile, overlap, multiple)
    ends = [min(s + tile, length) for s in starts]
    assert starts[0] == 0 and ends[-1] == length
    assert all(s % multiple == 0 for s in starts)
    for i in range(len(starts) - 1):
        assert ends[i] - starts[i + 1] >= overlap  # overlap at least the requested one
        assert starts[i + 1] > starts[i]


def test_tile_starts_edge_cases():
    assert tile_starts(10, 16, 4) == [0]
    with pytest.raises(ValueError, match="tile_overlap"):
        tile_starts(100, 8, 8)
    with pytest.raises(ValueError, match="multiple of 32"):
        tile_starts(100, 48, 8, 32)


def test_tiles_start_on_the_window_grid():
    """With pad_multiple 8 every tile the model sees starts on the 8-pixel grid and is padded only at the
    image border (so window-attention models see the whole image's windows)."""

    class Recorder(NearestUp):
        def forward(self, x):
            self.inputs.append(x.clone())
            return super().forward(x)

    m = Recorder(scale=2, pad_multiple=8)
    m.inputs = []
    x = torch.arange(50 * 37, dtype=torch.float32).view(1, 1, 50, 37).expand(1, 3, 50, 37) / (50 * 37)
    forward_tiled(m, x.contiguous(), tile=20, tile_overlap=6)  # tile rounded up to 24
    assert len(m.inputs) > 1
    for t in m.inputs:
        y0, x0 = divmod(round(float(t[0, 0, 0, 0]) * 50 * 37), 37)
        assert y0 % 8 == 0 and x0 % 8 == 0
        assert t.shape[-2] % 8 == 0 and t.shape[-1] % 8 == 0


@pytest.mark.parametrize(("tile", "overlap"), [(16, 12), (20, 16), (24, 13)])
def test_tiled_equals_whole_when_receptive_field_fits(tile, overlap):
    """Receptive radius 3 <= overlap/4: blending only uses exact pixels, so tiled == whole."""
    m = SmallConvSR(scale=2).eval()
    x = _img(b=2, h=41, w=53)
    whole = forward_padded(m, x)
    tiled = forward_tiled(m, x, tile=tile, tile_overlap=overlap)
    torch.testing.assert_close(tiled, whole, atol=2e-6, rtol=0)


def test_tiled_without_overlap_shows_seams():
    """The comparison above can fail: with no overlap the conv's borders differ from the whole image."""
    m = SmallConvSR(scale=2).eval()
    x = _img(h=41, w=53)
    diff = (forward_tiled(m, x, tile=16, tile_overlap=0) - forward_padded(m, x)).abs().max()
    assert diff > 1e-3


def test_tiled_blend_weights_sum_to_one():
    """An identity-like model gives the identity through tiling (weights normalise exactly)."""
    m = NearestUp(scale=2, pad_multiple=8).eval()
    x = _img(h=50, w=31)
    torch.testing.assert_close(forward_tiled(m, x, tile=16, tile_overlap=6), forward_padded(m, x), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# self-ensemble
# ------------------------------------------------------------------------------------------------


def test_self_ensemble_of_equivariant_model_is_plain_output():
    m = NearestUp(scale=2).eval()
    x = _img(h=13, w=19)
    plain = upscale_tensor(m, x)
    ens = upscale_tensor(m, x, self_ensemble=True)
    torch.testing.assert_close(ens, plain, atol=1e-6, rtol=0)
    assert len(m.seen) == 1 + 8
    assert {(13, 19), (19, 13)} == set(m.seen)


def test_self_ensemble_averages_the_eight_transforms():
    """A model that is not equivariant (adds a left-to-right ramp): the ensemble averages it out."""

    class Ramp(nn.Module):
        scale = 1

        def forward(self, x):
            return x + torch.linspace(0, 1, x.shape[-1]).view(1, 1, 1, -1)

    x = torch.zeros(1, 3, 6, 6)
    ens = ensemble_x8(Ramp(), x)
    # hflip cancels the ramp's direction: each pixel gets the mean 0.5 of ramp and its mirror
    torch.testing.assert_close(ens, torch.full_like(ens, 0.5))
    assert not torch.allclose(Ramp()(x), ens)


# ------------------------------------------------------------------------------------------------
# precision
# ------------------------------------------------------------------------------------------------


class OverflowsInHalf(nn.Module):
    """Multiplies by 1e5 then divides: fine in fp32, inf in fp16 (max 65504)."""

    scale = 1

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(3).view(3, 3, 1, 1) * 1e5)

    def forward(self, x):
        return self.lin(x) / 1e5


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_precisions_give_close_results(precision):
    m = SmallConvSR().eval()
    x = _img(h=16, w=16)
    ref = upscale_tensor(m, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionFallbackWarning)
        y = upscale_tensor(m, x, precision=precision)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref, atol=0.05 if precision != "fp32" else 0, rtol=0)


def test_fp16_nan_guard_falls_back_to_fp32_and_says_so():
    m = OverflowsInHalf().eval()
    x = _img(h=8, w=8)
    with torch.autocast("cpu", dtype=torch.float16):
        raw = m(x)
    if torch.isfinite(raw).all():
        pytest.skip("this torch's CPU autocast does not run conv in fp16")
    with pytest.warns(PrecisionFallbackWarning, match="fp16 forward gave NaN/inf"):
        y = upscale_tensor(m, x, precision="fp16", clamp=False)
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_nan_guard_is_per_tile():
    class NanInCorner(nn.Module):
        """Returns NaN under autocast only for tiles touching the top-left pixel."""

        scale = 1

        def forward(self, x):
            if torch.is_autocast_enabled("cpu") and x[0, 0, 0, 0] == self.corner:
                return x * float("nan")
            return x

    m = NanInCorner()
    x = _img(h=40, w=40)
    m.corner = x[0, 0, 0, 0].item()
    with pytest.warns(PrecisionFallbackWarning) as rec:
        y = upscale_tensor(m, x, tile=16, tile_overlap=4, precision="bf16", clamp=False)
    assert len(rec) == 1  # one tile of nine redone
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="precision"):
        upscale_tensor(m, x, precision="fp8")


# ------------------------------------------------------------------------------------------------
# batching
# ------------------------------------------------------------------------------------------------


def test_batches_group_same_sizes():
    sizes = [(4, 4), (5, 4), (4, 4), (4, 4), (5, 4)]
    assert list(batches_by_size(sizes, 2)) == [[0, 2], [3], [1, 4]]


def test_upscale_batches_returns_in_order_and_batches():
    m = NearestUp(scale=2).eval()
    imgs = [_img(h=h, w=w, seed=i)[0] for i, (h, w) in enumerate([(8, 8), (9, 8), (8, 8), (8, 8)])]
    outs = upscale_batches(m, imgs, max_batch=3)
    for im, out in zip(imgs, outs, strict=True):
        torch.testing.assert_close(out, F.interpolate(im[None], scale_factor=2, mode="nearest")[0])
    assert len(m.seen) == 2  # one batch of three 8x8, one of the 9x8


def test_upscale_batches_backs_off_on_oom():
    class OomAbove(NearestUp):
        def forward(self, x):
            if x.shape[0] > 1 or x.shape[-1] > 16:
                raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
            return super().forward(x)

    m = OomAbove(scale=2).eval()
    imgs = [_img(h=20, w=20, seed=i)[0] for i in range(3)]
    with pytest.warns(RuntimeWarning, match="retrying with tile=16"):
        outs = upscale_batches(m, imgs, max_batch=4, fallback_tile=16, tile_overlap=4)
    for im, out in zip(imgs, outs, strict=True):
        torch.testing.assert_close(out, F.interpolate(im[None], scale_factor=2, mode="nearest")[0], atol=1e-6,
                                   rtol=0)


@pytest.mark.gpu
def test_cuda_fp16_guard_and_bf16():
    m = OverflowsInHalf().cuda().eval()
    x = _img(h=40, w=40).cuda()
    with pytest.warns(PrecisionFallbackWarning):
        y = upscale_tensor(m, x, precision="fp16", clamp=False)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    conv = SmallConvSR().cuda().eval()
    ref = upscale_tensor(conv, x)
    torch.testing.assert_close(upscale_tensor(conv, x, precision="bf16"), ref, atol=0.05, rtol=0)
    # cuDNN may use TF32 convolutions: tiles and whole image then differ by TF32 rounding only
    torch.testing.assert_close(upscale_tensor(conv, x, tile=16, tile_overlap=12), ref, atol=5e-3, rtol=0)
