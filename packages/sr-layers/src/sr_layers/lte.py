"""LTE, the local texture estimator (Lee & Jin, CVPR 2022): an arbitrary-scale upsampler head.

LTE turns a latent feature map ``z`` (B, C, h, w) into an image of any size by querying a
continuous function at HR pixel centres. For a query at coordinate ``x`` (in [-1, 1]^2, row first,
pixel centres as in LIIF's ``make_coord``) with cell size ``c`` (the HR pixel's extent in the same
units), and each of the four latent codes ``z_j`` nearest to ``x`` (the 2x2 block of LR pixel
centres around it):

* amplitude ``A_j = coef(z)_j`` (3x3 conv C -> hidden, sampled at ``z_j``'s pixel);
* frequency ``F_j = freq(z)_j`` (3x3 conv C -> hidden), read as hidden/2 2-vectors ``F_jk``;
* phase ``P = phase(c * (h, w))`` (linear 2 -> hidden/2, no bias): the cell in latent-pixel units;
* ``delta_j = (x - x_j) * (h, w)``, the offset from the code's centre in units of half LR pixels;
* basis ``h_j = A_j * [cos(pi (F_jk . delta_j + P_k)), sin(pi (F_jk . delta_j + P_k))]_k``;
* ``f(x) = sum_j w_j MLP(h_j)``: the local ensemble, where ``w_j`` is the area of the rectangle
  between ``x`` and the diagonally opposite code, divided by the sum of the four areas (it sums to
  one and equals bilinear interpolation weights away from the borders).

Facts taken from the LTE paper and its code (jaewon-lee-b/lte ``models/lte.py``, the ESC authors'
copy in dslisleedh/ESC ``esc_arb/models/lte.py``): hidden 256, MLP 256-256-256 with ReLU, the
nearest-code look-up after shifting the query by half an LR pixel (+1e-6) with the coordinate
clamped to (-1 + 1e-6, 1 - 1e-6), the 1e-9 added to each area, the diagonal swap of the areas,
``pi`` in the basis, the bilinear image skip sampled at the query with border padding, and
"cell clipping" at evaluation (beyond the largest training scale the cell of that scale is used).
Parameter names follow that code (``coef``, ``freq``, ``phase``, ``imnet.layers.{0,2,4,6}``).

Ours: the queries of an image are evaluated in chunks of ``query_chunk`` HR pixels (the code's
``eval_bsize``), with their coordinates generated per chunk and written straight into the output
tensor, so memory beyond the output is ``O(B * query_chunk * 4 * hidden)`` whatever the output
size (x30 of a large image included); the four codes of a chunk are evaluated in one batch; the
neighbour look-up is index arithmetic (the same rounding as ``grid_sample(mode="nearest")``)
instead of three ``grid_sample`` calls.

:func:`lte_query_reference` is the readable per-query oracle of :meth:`LTE.query`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = [
    "LTE",
    "LTEMLP",
    "LTEFeatures",
    "cell_for_size",
    "clip_cell",
    "local_ensemble",
    "lte_query_reference",
    "make_coord",
    "output_size",
]

_EPS_SHIFT = 1e-6  # the code's eps_shift: breaks ties of the nearest look-up
_CLAMP = 1e-6  # shifted coordinates are clamped to (-1 + 1e-6, 1 - 1e-6)
_AREA_EPS = 1e-9  # added to every area before normalising


def make_coord(size: tuple[int, int], *, device: torch.device | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates of an (H, W) grid in [-1, 1], row first: (H*W, 2).

    Pixel (i, j) has coordinate ``(-1 + (2i + 1)/H, -1 + (2j + 1)/W)`` (LIIF's ``make_coord``).
    """
    h, w = size
    ys = -1 + (2 * torch.arange(h, device=device, dtype=dtype) + 1) / h
    xs = -1 + (2 * torch.arange(w, device=device, dtype=dtype) + 1) / w
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)
    return rearrange(grid, "h w two -> (h w) two")


def cell_for_size(size: tuple[int, int], n: int, *, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The cell of every query of an (H, W) output: (n, 2) filled with ``(2/H, 2/W)``."""
    h, w = size
    cell = torch.empty(n, 2, device=device, dtype=dtype)
    cell[:, 0] = 2.0 / h
    cell[:, 1] = 2.0 / w
    return cell


def clip_cell(cell: torch.Tensor, lr_size: tuple[int, int], max_scale: float | None) -> torch.Tensor:
    """LTE's cell clipping: a cell smaller than that of ``max_scale`` becomes that cell.

    ``cell`` (..., 2) in coordinate units of an LR image of ``lr_size`` (h, w). The official
    evaluation multiplies the cell by ``max(scale / max_scale, 1)``, i.e. beyond the largest training
    scale the network is queried with that scale's cell; we clamp per axis, which is the same for
    isotropic scales. ``max_scale=None`` returns the cell unchanged.
    """
    if max_scale is None:
        return cell
    h, w = lr_size
    floor = cell.new_tensor([2.0 / (h * max_scale), 2.0 / (w * max_scale)])
    return torch.maximum(cell, floor)


def output_size(lr_size: tuple[int, int], scale: float | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The HR size for an LR ``(h, w)``: ``size`` if given, else ``(round(h*scale), round(w*scale))``.

    Exactly one of ``scale`` (float >= 1) and ``size`` (two positive ints) must be given; a ValueError
    names the argument otherwise.
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale= (a float >= 1) and size= (H, W)")
    if size is not None:
        if len(size) != 2 or any(int(v) != v or v < 1 for v in size):
            raise ValueError(f"size must be two positive integers (H, W), got {size!r}")
        return int(size[0]), int(size[1])
    assert scale is not None
    if not math.isfinite(float(scale)) or float(scale) < 1:
        raise ValueError(f"scale must be a finite float >= 1, got {scale!r}")
    h, w = lr_size
    return max(1, round(h * float(scale))), max(1, round(w * float(scale)))


# order of the four codes: (row shift, column shift) = (-,-), (-,+), (+,-), (+,+) as in the code
_SHIFTS = ((-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0))


def local_ensemble(coord: torch.Tensor, lr_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four nearest latent codes of each query and their ensemble weights.

    coord: (..., 2) float, row/column coordinates in [-1, 1]. Returns

    * ``index`` (..., 4, 2) int64: (row, column) of each code in the (h, w) latent grid;
    * ``rel`` (..., 4, 2) float: ``(coord - centre of the code) * (h, w)``;
    * ``weight`` (..., 4) float: area of the diagonally opposite code's rectangle over the sum of
      the four areas (each area ``|rel_y rel_x| + 1e-9``); sums to one.
    """
    h, w = lr_size
    n = coord.new_tensor([float(h), float(w)])
    shifts = coord.new_tensor(_SHIFTS)  # (4, 2)
    shifted = coord.unsqueeze(-2) + shifts / n + _EPS_SHIFT  # (..., 4, 2)
    shifted = shifted.clamp(-1 + _CLAMP, 1 - _CLAMP)
    # grid_sample(nearest, align_corners=False): round(((x + 1) n - 1) / 2), ties to even
    pix = torch.round(((shifted + 1) * n - 1) / 2)
    pix = torch.minimum(pix.clamp_min(0), n - 1)
    centre = (2 * pix + 1) / n - 1
    rel = (coord.unsqueeze(-2) - centre) * n
    area = (rel[..., 0] * rel[..., 1]).abs() + _AREA_EPS
    weight = area.flip(-1) / area.sum(dim=-1, keepdim=True)  # code k takes the area of code 3 - k
    return pix.long(), rel, weight


class LTEFeatures(NamedTuple):
    """What :meth:`LTE.encode` computes once per image: amplitude and frequency maps (B, hidden, h, w)."""

    coef: torch.Tensor
    freq: torch.Tensor


class LTEMLP(nn.Module):
    """The decoder MLP (keys ``layers.{0,2,...}``): Linear + ReLU per hidden width, then Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden:
            layers += [nn.Linear(last, width), nn.ReLU()]
            last = width
        layers.append(nn.Linear(last, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.layers(x)


class LTE(nn.Module):
    """The LTE head. Keys: ``coef``, ``freq`` (3x3 convs in_dim -> hidden), ``phase`` (2 -> hidden/2,
    no bias), ``imnet.layers.*`` (the MLP hidden -> ... -> out_dim).

    ``query_chunk``: HR pixels per image evaluated at once by :meth:`forward` (and by :meth:`query`
    when the query count exceeds it); memory is ``O(B * query_chunk * 4 * hidden_dim)``.
    ``max_scale``: the cell-clipping scale (the largest training scale; None disables clipping).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 256,
        mlp_hidden: Sequence[int] = (256, 256, 256),
        out_dim: int = 3,
        *,
        query_chunk: int = 16384,
        max_scale: float | None = 4.0,
    ) -> None:
        super().__init__()
        if hidden_dim <= 0 or hidden_dim % 2:
            raise ValueError(f"hidden_dim must be a positive even number, got {hidden_dim}")
        if query_chunk < 1:
            raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
        if max_scale is not None and max_scale < 1:
            raise ValueError(f"max_scale must be >= 1 or None, got {max_scale}")
        self.hidden_dim = hidden_dim
        self.query_chunk = int(query_chunk)
        self.max_scale = max_scale
        self.coef = nn.Conv2d(in_dim, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(in_dim, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = LTEMLP(hidden_dim, out_dim, mlp_hidden)

    def encode(self, feat: torch.Tensor) -> LTEFeatures:
        """feat (B, in_dim, h, w) -> amplitude and frequency maps, each (B, hidden, h, w)."""
        return LTEFeatures(self.coef(feat), self.freq(feat))

    def _query_chunk(
        self, rows: tuple[torch.Tensor, torch.Tensor], lr_size: tuple[int, int], coord: torch.Tensor,
        cell: torch.Tensor, image: torch.Tensor | None,
    ) -> torch.Tensor:
        coef_rows, freq_rows = rows  # (B h w, hidden)
        b = coord.shape[0]
        h, w = lr_size
        index, rel, weight = local_ensemble(coord, lr_size)  # (B, Q, 4, 2), (B, Q, 4, 2), (B, Q, 4)
        flat = index[..., 0] * w + index[..., 1]
        flat = flat + torch.arange(b, device=flat.device).view(b, 1, 1) * (h * w)
        flat = flat.reshape(-1)
        q_coef = coef_rows.index_select(0, flat)  # (B Q 4, hidden)
        q_freq = rearrange(freq_rows.index_select(0, flat), "n (k two) -> n k two", two=2)
        arg = (q_freq * rearrange(rel, "b q j two -> (b q j) 1 two")).sum(-1)  # (B Q 4, hidden/2)
        rel_cell = cell * cell.new_tensor([float(h), float(w)])
        phase = rearrange(self.phase(rel_cell), "b q k -> (b q) 1 k")
        arg = rearrange(arg, "(bq j) k -> bq j k", j=4) + phase
        basis = torch.cat((torch.cos(math.pi * arg), torch.sin(math.pi * arg)), dim=-1)
        pred = self.imnet(q_coef * rearrange(basis, "bq j c -> (bq j) c"))
        pred = rearrange(pred, "(b q j) c -> b q j c", b=b, j=4)
        out = (pred * weight.unsqueeze(-1)).sum(dim=2)
        if image is not None:
            out = out + _bilinear_at(image, coord)
        return out

    @staticmethod
    def _rows(enc: LTEFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        return (rearrange(enc.coef, "b c h w -> (b h w) c").contiguous(),
                rearrange(enc.freq, "b c h w -> (b h w) c").contiguous())

    def query(self, enc: LTEFeatures, coord: torch.Tensor, cell: torch.Tensor,
              image: torch.Tensor | None = None) -> torch.Tensor:
        """Values at arbitrary queries (the training path: LTE's sampled coordinates).

        enc: from :meth:`encode`; coord, cell: (B, Q, 2) float (row, column), as in the module
        docstring (no cell clipping here); image: optional (B, out_dim, h, w), bilinearly sampled at
        ``coord`` (border padding) and added (LTE's skip). Returns (B, Q, out_dim). Evaluated in
        chunks of ``query_chunk`` queries.
        """
        if coord.ndim != 3 or coord.shape[-1] != 2 or cell.shape != coord.shape:
            raise ValueError(f"coord and cell must both be (B, Q, 2), got {tuple(coord.shape)} and {tuple(cell.shape)}")
        lr_size = (enc.coef.shape[-2], enc.coef.shape[-1])
        rows = self._rows(enc)
        n = coord.shape[1]
        if n <= self.query_chunk:
            return self._query_chunk(rows, lr_size, coord, cell, image)
        parts = [
            self._query_chunk(rows, lr_size, coord[:, i:i + self.query_chunk], cell[:, i:i + self.query_chunk], image)
            for i in range(0, n, self.query_chunk)
        ]
        return torch.cat(parts, dim=1)

    def forward(self, feat: torch.Tensor, size: tuple[int, int], image: torch.Tensor | None = None) -> torch.Tensor:
        """Render the whole (H, W) = ``size`` image: feat (B, in_dim, h, w) -> (B, out_dim, H, W).

        Queries every HR pixel centre with cell ``(2/H, 2/W)`` (clipped to ``max_scale``'s cell),
        ``query_chunk`` pixels at a time, written into the preallocated output; ``image`` as in
        :meth:`query`.
        """
        out_h, out_w = int(size[0]), int(size[1])
        if out_h < 1 or out_w < 1:
            raise ValueError(f"size must be positive, got {size!r}")
        dev, dt = feat.device, feat.dtype
        rows = (2 * torch.arange(out_h, device=dev, dtype=torch.float64) + 1) / out_h - 1
        cols = (2 * torch.arange(out_w, device=dev, dtype=torch.float64) + 1) / out_w - 1
        return self.render_grid(feat, rows.to(dt), cols.to(dt), (2.0 / out_h, 2.0 / out_w), image)

    def render_grid(self, feat: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, cell: tuple[float, float],
                    image: torch.Tensor | None = None) -> torch.Tensor:
        """Render the separable grid of queries ``rows x cols``: feat (B, in_dim, h, w), rows (Hq,) and
        cols (Wq,) float coordinates in [-1, 1] of ``feat``'s frame, ``cell`` the (row, column) cell in
        the same units (clipped to ``max_scale``'s cell here) -> (B, out_dim, Hq, Wq).

        :meth:`forward` is the whole-image grid; a tiled renderer passes the part of the output grid
        that falls on a tile, in the tile's frame. ``query_chunk`` queries at a time, written into the
        preallocated output, so memory beyond it is bounded whatever the grid size.
        """
        if rows.ndim != 1 or cols.ndim != 1 or rows.numel() < 1 or cols.numel() < 1:
            raise ValueError(f"rows and cols must be non-empty 1-D tensors, got {tuple(rows.shape)} and {tuple(cols.shape)}")
        enc = self.encode(feat)
        b, _, h, w = feat.shape
        table = self._rows(enc)
        out_h, out_w = rows.numel(), cols.numel()
        n = out_h * out_w
        out_dim = self.imnet.layers[-1].out_features
        out = feat.new_empty(b, out_dim, n)
        dev = feat.device
        rows, cols = rows.to(device=dev, dtype=feat.dtype), cols.to(device=dev, dtype=feat.dtype)
        cell_hw = clip_cell(feat.new_tensor([float(cell[0]), float(cell[1])]), (h, w), self.max_scale)
        for start in range(0, n, self.query_chunk):
            stop = min(start + self.query_chunk, n)
            flat = torch.arange(start, stop, device=dev)
            coord = torch.stack((rows[torch.div(flat, out_w, rounding_mode="floor")],
                                 cols[torch.remainder(flat, out_w)]), dim=-1).unsqueeze(0).expand(b, -1, -1)
            q_cell = cell_hw.expand(b, stop - start, 2)
            out[:, :, start:stop] = self._query_chunk(table, (h, w), coord, q_cell, image).transpose(1, 2)
        return out.view(b, out_dim, out_h, out_w)

    def extra_repr(self) -> str:
        return f"hidden_dim={self.hidden_dim}, query_chunk={self.query_chunk}, max_scale={self.max_scale}"


def _bilinear_at(image: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """image (B, C, h, w) sampled bilinearly at coord (B, Q, 2) (row, col), border padding -> (B, Q, C)."""
    grid = coord.flip(-1).unsqueeze(1)  # grid_sample wants (x, y)
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return rearrange(sampled, "b c 1 q -> b q c")


def lte_query_reference(lte: LTE, enc: LTEFeatures, coord: torch.Tensor, cell: torch.Tensor,
                        image: torch.Tensor | None = None) -> torch.Tensor:
    """Readable per-query LTE (the oracle of :meth:`LTE.query`; slow, for tests).

    Same arguments and result as :meth:`LTE.query`. For every query: the 2x2 block of latent pixel
    centres around it (``floor`` of the pixel-space position and the next one, clamped to the grid),
    the basis of each code, the MLP, the area-weighted sum, the bilinear skip computed by hand.
    """
    b_n, q_n = coord.shape[:2]
    _, _, h, w = enc.coef.shape
    out = []
    for b in range(b_n):
        rows = []
        for q in range(q_n):
            y, x = float(coord[b, q, 0]), float(coord[b, q, 1])
            py, px = (y + 1) * h / 2 - 0.5, (x + 1) * w / 2 - 0.5  # pixel-space position
            ys = [min(max(math.floor(py), 0), h - 1), min(max(math.floor(py) + 1, 0), h - 1)]
            xs = [min(max(math.floor(px), 0), w - 1), min(max(math.floor(px) + 1, 0), w - 1)]
            codes = [(ys[0], xs[0]), (ys[0], xs[1]), (ys[1], xs[0]), (ys[1], xs[1])]
            preds, areas = [], []
            for iy, ix in codes:
                dy = (y - (-1 + (2 * iy + 1) / h)) * h
                dx = (x - (-1 + (2 * ix + 1) / w)) * w
                amp = enc.coef[b, :, iy, ix]
                fr = enc.freq[b, :, iy, ix]
                ph = lte.phase.weight @ torch.stack((cell[b, q, 0] * h, cell[b, q, 1] * w))
                k = lte.hidden_dim // 2
                arg = torch.stack([fr[2 * i] * dy + fr[2 * i + 1] * dx for i in range(k)]) + ph
                basis = torch.cat((torch.cos(math.pi * arg), torch.sin(math.pi * arg)))
                v = amp * basis
                for layer in lte.imnet.layers:
                    v = layer.weight @ v + layer.bias if isinstance(layer, nn.Linear) else torch.relu(v)
                preds.append(v)
                areas.append(abs(dy * dx) + _AREA_EPS)
            total = sum(areas)
            value = sum(p * (areas[3 - j] / total) for j, p in enumerate(preds))
            if image is not None:
                value = value + _bilinear_reference(image[b], py, px)
            rows.append(value)
        out.append(torch.stack(rows))
    return torch.stack(out)


def _bilinear_reference(img: torch.Tensor, py: float, px: float) -> torch.Tensor:
    """img (C, h, w) at pixel-space (py, px) with replicated borders (grid_sample's 'border')."""
    _, h, w = img.shape
    py, px = min(max(py, 0.0), h - 1.0), min(max(px, 0.0), w - 1.0)
    y0, x0 = math.floor(py), math.floor(px)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    fy, fx = py - y0, px - x0
    return ((1 - fy) * (1 - fx) * img[:, y0, x0] + (1 - fy) * fx * img[:, y0, x1]
            + fy * (1 - fx) * img[:, y1, x0] + fy * fx * img[:, y1, x1])
