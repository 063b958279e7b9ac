"""Dense-Local Sparse-Global (DLSG) initial index lists (IET paper, Fig. 2).

Torch only (vectorised, no Python loop over pixels): the list depends on the image size alone, is
computed once per size and shared by every head and image, so a Triton kernel would save nothing.

Geometry for the token at (y, x) of an height x width image, tokens numbered y * width + x:

* Local part, ``local**2`` columns: the local x local window with origin
  ``clamp(y - local // 2, 0, height - local)`` (same for x), i.e. centred on the token and shifted
  inside the image at borders so it is always full (NATTEN-style); row-major order. If the image is
  smaller than the window on an axis, the positions outside the image are -1.
* Global part, ``samples**2`` columns: a (samples * dilation)-square region whose origin is
  ``clamp(y - R // 2, 0, height - R)`` snapped down to the global dilation grid (R = samples *
  dilation), split into samples x samples patches of dilation x dilation; one token per patch,
  row-major. The sampled position inside each grid patch is ``dilation // 2`` (the patch centre)
  without a generator, or one random offset per grid patch per call with a generator (shared by all
  queries whose region covers that patch). Positions past the last row/column are clamped to it; a
  patch lying entirely outside the image, or a sample inside the token's local window, gives -1.
"""

from __future__ import annotations

import torch

from ._checks import check_positive_int

#: Target size (elements) of the per-chunk temporaries; the list is built a few token rows at a time.
_CHUNK_ELEMENTS = 1 << 22


def dlsg_index(
    height: int,
    width: int,
    *,
    local: int,
    samples: int,
    dilation: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(N, local**2 + samples**2) int64 index list, N = height * width, -1 for empty slots.

    Args:
        height, width: token grid size.
        local: side of the dense local window.
        samples: number of sampled patches per side of the global region.
        dilation: patch side d (the region side is samples * d).
        generator: random sample inside each patch (training); None picks the patch centre (inference).
        device: where the result lives (default: the generator's device, else CPU).
    """
    height = check_positive_int("height", height)
    width = check_positive_int("width", width)
    local = check_positive_int("local", local)
    samples = check_positive_int("samples", samples)
    dilation = check_positive_int("dilation", dilation)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    out_device = torch.device(device) if device is not None else gen_device

    ys = torch.arange(height, device=gen_device)
    xs = torch.arange(width, device=gen_device)

    def window_origin(pos: torch.Tensor, size: int, extent: int) -> torch.Tensor:
        return (pos - size // 2).clamp(min=0, max=max(extent - size, 0))

    # Per-row / per-column geometry, (height, .) and (width, .): cheap.
    lo_y = window_origin(ys, local, height)
    lo_x = window_origin(xs, local, width)
    ly = lo_y[:, None] + torch.arange(local, device=gen_device)  # local window rows (H, local)
    lx = lo_x[:, None] + torch.arange(local, device=gen_device)
    # Global region, snapped to the d-grid: patch rows/cols (height, samples), (width, samples).
    region = samples * dilation
    g_y = window_origin(ys, region, height) // dilation * dilation
    g_x = window_origin(xs, region, width) // dilation * dilation
    py = g_y[:, None] + dilation * torch.arange(samples, device=gen_device)
    px = g_x[:, None] + dilation * torch.arange(samples, device=gen_device)
    cells_y, cells_x = -(-height // dilation), -(-width // dilation)
    # one offset per grid cell for the whole image, drawn before the row loop (same draw as unchunked)
    if generator is None:
        off = torch.full((cells_y, cells_x, 2), dilation // 2, dtype=torch.long, device=gen_device)
    else:
        off = torch.randint(0, dilation, (cells_y, cells_x, 2), generator=generator, device=gen_device)
    cy = (py // dilation).clamp_max(cells_y - 1)  # (H, S)
    cx = (px // dilation).clamp_max(cells_x - 1)  # (W, S)

    n, kk = height * width, local * local + samples * samples
    out = torch.empty(n, kk, dtype=torch.int64, device=out_device)
    # Rows of tokens in chunks, so that the (rows, W, S, S) temporaries stay near _CHUNK_ELEMENTS
    # elements whatever the image size (a 640 x 360 image with S = 25 would need ~2 GB per int64 one).
    rows = max(1, _CHUNK_ELEMENTS // max(1, width * max(samples * samples, local * local)))
    for r0 in range(0, height, rows):
        r = slice(r0, min(r0 + rows, height))
        # tokens of the local window (h, W, local, local)
        l_ok = (ly[r] < height)[:, None, :, None] & (lx < width)[None, :, None, :]
        l_tok = (ly[r][:, None, :, None] * width + lx[None, :, None, :]).masked_fill(~l_ok, -1)
        cell_off = off[cy[r][:, None, :, None], cx[None, :, None, :]]  # (h, W, S, S, 2)
        sy = (py[r][:, None, :, None] + cell_off[..., 0]).clamp_max(height - 1)
        sx = (px[None, :, None, :] + cell_off[..., 1]).clamp_max(width - 1)
        del cell_off
        g_ok = (py[r] < height)[:, None, :, None] & (px < width)[None, :, None, :]
        in_local = (
            (sy >= lo_y[r][:, None, None, None])
            & (sy < lo_y[r][:, None, None, None] + local)
            & (sx >= lo_x[None, :, None, None])
            & (sx < lo_x[None, :, None, None] + local)
        )
        g_tok = (sy * width + sx).masked_fill(~g_ok | in_local, -1)
        m = l_tok.shape[0] * width
        chunk = torch.cat([l_tok.reshape(m, local * local), g_tok.reshape(m, samples * samples)], dim=1)
        out[r0 * width : r0 * width + m] = chunk.to(out_device)
    return out
