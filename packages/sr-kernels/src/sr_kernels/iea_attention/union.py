"""Tile-union plans for the tensor-core path of ``iea_attention`` (iea.md 3.8.1). Torch only.

Neighbouring queries of a DLSG list share most of their candidates: the 16 queries of a 4 x 4 tile of a
64 x 64 image (local window 8, 12 x 12 global samples) list 16 x 208 = 3,328 slots but only ~260 distinct
tokens. A plan groups the queries into tiles of 16 (4 x 4 patches of the image when its size is given,
else runs of 16 consecutive rows) and records, per tile, the union of their candidate tokens, the union
position of every slot and the slot of every (query, union position). The Triton kernel then loads each
union row once and computes the tile's logits and output with ``tl.dot`` (tensor cores), instead of
gathering 16 x K rows one query at a time.

Selection rule (per tile, at plan time): a tile takes the tile-union kernel when its union has at most
``max_union`` (512, the static tile width of the kernel) tokens and no query lists a token twice (the
slot map needs one slot per (query, token)); every other tile's rows run the per-query gather kernel.
Whether to build a plan at all is the caller's choice: it pays off when the union is much smaller than
the tile's slot count. :attr:`TileUnion.load_reduction` (slots / union rows over the eligible tiles) is
the factor by which the key/value row loads shrink: ~12x for DLSG lists at 4 x 4 tiles, ~9x for 1 x 16
runs (64 x 64 and 320 x 160 images, d = 2 and 3). A plan costs one sort of B*Hi*N*K int64 keys and holds
N*K + N*512 int16 (about 2 KB per query), so build it once per list and reuse it: a DLSG list depends on
the image size only and is shared by every image and head of the first layer. Lists of later layers
(per-head top-k subsets) are not planned. :attr:`TileUnion.worthwhile` is ``load_reduction >= 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks
from ..gather_attention._launch import next_pow2
from ._launch import UNION_MAX, UNION_QUERIES

Tensor = torch.Tensor


@dataclass(frozen=True)
class TileUnion:
    """A tile-union plan of one index list (B, Hi, N, K); build it with :func:`iea_tile_union`.

    Tensors (leading dims (Bp, Hi) with Bp = 1 when the list is broadcast over the batch):
    tile_list (Bp,Hi,NT) int32: the eligible tiles (-1 padded); tile_rows (1,1,T,16) int32: the query
    rows of every tile (-1 past the image); tokens (Bp,Hi,T,UP) int32: each tile's union (-1 padded);
    upos (Bp,Hi,N,K) int16: union position of every slot (-1 empty); slot_map (Bp,Hi,T,16,UP) int16: the
    slot of every (query, union position) or -1; rest_rows (Bp,Hi,R) int32: rows of the other tiles.
    """

    tile_list: Tensor
    tile_rows: Tensor
    tokens: Tensor
    upos: Tensor
    slot_map: Tensor
    rest_rows: Tensor
    shape: tuple[int, int, int, int]
    load_reduction: float
    eligible_fraction: float

    @property
    def worthwhile(self) -> bool:
        """True when the plan cuts the K/V row loads of its tiles at least in half."""
        return self.load_reduction >= 2.0

    def tensors(self) -> list[Tensor]:
        return [self.tile_list, self.tile_rows, self.tokens, self.upos, self.slot_map, self.rest_rows]

    def check_matches(self, index: Tensor) -> None:
        """ValueError unless ``index`` has the shape (and batch broadcast) this plan was built for."""
        b, hi, n, kk = index.shape
        pb, phi, pn, pk = self.shape
        if (hi, n, kk) != (phi, pn, pk) or pb not in (1, b):
            raise ValueError(f"tile_union was built for an index of shape {self.shape}, got {tuple(index.shape)}")
        if pb == 1 and b > 1 and index.stride(0) != 0:
            raise ValueError(
                "tile_union was built from one list broadcast over the batch, but index differs per batch "
                "element (stride 0 on dim 0 expected); build the plan from this index"
            )
        if self.upos.device != index.device:
            raise ValueError(f"tile_union is on {self.upos.device} but index is on {index.device}")


def _tile_rows(n: int, image_size: tuple[int, int] | None, tile: tuple[int, int], device) -> Tensor:
    if image_size is None:
        t = -(-n // UNION_QUERIES)
        rows = torch.arange(t * UNION_QUERIES, device=device).view(t, UNION_QUERIES)
        return rows.masked_fill(rows >= n, -1)
    height, width = image_size
    th, tw = tile
    ty, tx = -(-height // th), -(-width // tw)
    ys = torch.arange(ty * th, device=device).view(ty, 1, th, 1)
    xs = torch.arange(tx * tw, device=device).view(1, tx, 1, tw)
    rows = (ys * width + xs).masked_fill((ys >= height) | (xs >= width), -1)
    return rows.reshape(ty * tx, th * tw)


def iea_tile_union(
    index: Tensor,
    *,
    image_size: tuple[int, int] | None = None,
    tile: tuple[int, int] = (4, 4),
    max_union: int = UNION_MAX,
) -> TileUnion:
    """Plan the tile-union (tensor-core) path of :func:`sr_kernels.iea_attention` for ``index``.

    Args:
        index: integer (B, Hi, N, K), -1 = empty slot (a list broadcast over the batch with stride 0,
            like IET's DLSG list, is planned once).
        image_size: (height, width) with height * width = N for 2-D tiles of ``tile`` queries
            (tile[0] * tile[1] must be 16); None: tiles of 16 consecutive rows.
        max_union: the largest union a tile may have (<= 512, a power of two not required).

    Returns a :class:`TileUnion` on index's device.
    """
    index = _checks.check_tensor("index", index)
    if index.dim() != 4 or index.dtype not in _checks.INDEX_DTYPES:
        raise ValueError(f"index must be an integer (B, Hi, N, K) tensor, got {index.dtype} {tuple(index.shape)}")
    b, hi, n, kk = index.shape
    if kk > 32767:
        raise ValueError(f"index has K = {kk} slots; the tile-union plan supports at most 32767")
    max_union = _checks.check_positive_int("max_union", max_union)
    if max_union > UNION_MAX:
        raise ValueError(f"max_union must be <= {UNION_MAX} (the kernel's static tile), got {max_union}")
    if image_size is not None:
        hh, ww = (_checks.check_positive_int("image_size[0]", image_size[0]),
                  _checks.check_positive_int("image_size[1]", image_size[1]))
        if hh * ww != n:
            raise ValueError(f"image_size {image_size} has {hh * ww} tokens but index has N = {n}")
        if len(tile) != 2 or tile[0] * tile[1] != UNION_QUERIES or min(tile) < 1:
            raise ValueError(f"tile must be two positive ints with a product of {UNION_QUERIES}, got {tile}")
    dev = index.device
    src = index[:1] if b > 1 and index.stride(0) == 0 else index
    bp = src.shape[0]
    rows = _tile_rows(n, image_size, tile, dev)  # (T, BQ)
    t, bq = rows.shape
    row_ok = rows >= 0
    tt = src[:, :, rows.clamp_min(0)].long()  # (Bp, Hi, T, BQ, K)
    tt = tt.masked_fill(~row_ok[None, None, :, :, None], -1)
    p = bp * hi
    flat = tt.reshape(p * t, bq * kk)
    qi = torch.arange(bq, device=dev).repeat_interleave(kk)
    big = torch.iinfo(torch.int64).max
    key = torch.where(flat >= 0, flat * bq + qi, big)
    sk, order = key.sort(dim=1, stable=True)
    ok_s = sk != big
    tok_s = torch.where(ok_s, sk // bq, -1)
    first = torch.ones_like(ok_s)
    first[:, 1:] = tok_s[:, 1:] != tok_s[:, :-1]
    new_tok = ok_s & first
    dup = torch.zeros_like(ok_s)
    dup[:, 1:] = ok_s[:, 1:] & (sk[:, 1:] == sk[:, :-1])
    upos_s = new_tok.cumsum(1) - 1
    count = new_tok.sum(1)
    eligible = (count <= max_union) & ~dup.any(1)
    up = max(16, next_pow2(int(count[eligible].max()))) if bool(eligible.any()) else 16

    fits = ok_s & (upos_s < up)
    tokens = torch.full((p * t, up + 1), -1, dtype=torch.int64, device=dev)
    tokens.scatter_(1, torch.where(new_tok & fits, upos_s, up), torch.where(new_tok & fits, tok_s, -1))
    tokens = tokens[:, :up]
    upos_e = torch.empty_like(upos_s)
    upos_e.scatter_(1, order, torch.where(fits, upos_s, -1))
    slot_s = order % kk
    q_s = torch.where(ok_s, sk % bq, 0)
    lin = torch.where(fits, q_s * up + upos_s, bq * up)
    slot_map = torch.full((p * t, bq * up + 1), -1, dtype=torch.int64, device=dev)
    slot_map.scatter_(1, lin, torch.where(fits, slot_s, -1))
    slot_map = slot_map[:, : bq * up]

    # per-slot union positions back in row order (rows of ineligible tiles are never read: -1)
    upos_e = upos_e.masked_fill(~eligible[:, None], -1).view(p, t * bq, kk)
    upos = torch.full((p, n + 1, kk), -1, dtype=torch.int16, device=dev)
    upos[:, torch.where(row_ok, rows, n).reshape(-1)] = upos_e.to(torch.int16)
    upos = upos[:, :n]

    elig = eligible.view(p, t)
    tid = torch.arange(t, device=dev).expand(p, t)
    nt = int(elig.sum(1).max()) if t > 0 else 0
    order_e = torch.sort((~elig).to(torch.int8), dim=1, stable=True).indices  # eligible tiles first
    tile_list = torch.where(torch.gather(elig, 1, order_e), torch.gather(tid, 1, order_e), -1)[:, :nt]
    rest_mask = (~elig)[:, :, None] & row_ok[None]
    rest_all = torch.where(rest_mask, rows[None].expand(p, t, bq), -1).reshape(p, t * bq)
    nr = int(rest_mask.reshape(p, -1).sum(1).max()) if t > 0 else 0
    rest_order = torch.sort((rest_all < 0).to(torch.int8), dim=1, stable=True).indices
    rest_rows = torch.gather(rest_all, 1, rest_order)[:, :nr]

    slots_in = (tt >= 0).reshape(p * t, -1).sum(1)
    e_slots = slots_in[eligible].sum().item()
    e_union = count[eligible].sum().item()
    return TileUnion(
        tile_list=tile_list.view(bp, hi, nt).to(torch.int32).contiguous(),
        tile_rows=rows.view(1, 1, t, bq).to(torch.int32).contiguous(),
        tokens=tokens.view(bp, hi, t, up).to(torch.int32).contiguous(),
        upos=upos.view(bp, hi, n, kk).contiguous(),
        slot_map=slot_map.view(bp, hi, t, bq, up).to(torch.int16).contiguous(),
        rest_rows=rest_rows.view(bp, hi, nr).to(torch.int32).contiguous(),
        shape=(bp, hi, n, kk),
        load_reduction=(e_slots / e_union) if e_union else 0.0,
        eligible_fraction=float(eligible.float().mean()) if eligible.numel() else 0.0,
    )
