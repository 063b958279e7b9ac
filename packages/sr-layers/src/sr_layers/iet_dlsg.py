"""First-block candidates of IEA: the DLSG list and the slot-indexed relative-position-bias ids.

DLSG (Dense-Local Sparse-Global, IET paper section 3.2) lists, for every token, the ``w x w``
tokens of a border-shifted local window (slots ``0 .. w*w-1``) and one sample from each of the
``G x G`` patches of side ``d`` (the dilation) of a surrounding region (slots ``w*w ..``); samples
that fall inside the local window are ``-1``. The list itself comes from ``sr_kernels.dlsg_index``.

The first block's relative position bias is indexed by *slot kind and offset* so that the same
parameters serve every dilation (iea.md section 4 item 6):

* local slot: id = (dy + w - 1) * (2w - 1) + (dx + w - 1), the pixel offset of the key from the
  query (|dy|, |dx| <= w - 1 because the window always contains the query);
* global slot: id = (2w - 1)^2 + (py + G) * (2G + 1) + (px + G), where py = ky // d - qy // d is
  the offset in *patch units* of the global d-grid (clamped to [-G, G]). Training with d = 2 and
  inference with d = 3 therefore look up the same table entries for the same patch.

The table has ``rpb_table_size(w, G) = (2w - 1)^2 + (2G + 1)^2`` rows.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

import sr_kernels


def rpb_table_size(local: int, samples: int) -> int:
    """Rows of the slot-indexed bias table: ``(2 local - 1)^2 + (2 samples + 1)^2``."""
    return (2 * local - 1) ** 2 + (2 * samples + 1) ** 2


_CHUNK_ROWS_ELEMENTS = 1 << 22  # bias ids are computed for about this many (token, slot) pairs at a time


def dlsg_bias_ids(
    index: torch.Tensor, height: int, width: int, *, local: int, samples: int, dilation: int
) -> torch.Tensor:
    """Bias-table row of every DLSG slot (see the module docstring).

    index: (N, K) integer DLSG list for an image of ``height x width`` (N = height*width), local
    slots first. Returns (N, K) in index's dtype with values in [0, rpb_table_size(local, samples));
    empty slots get 0 (their logits are -inf anyway). Computed in row chunks, so the int64
    temporaries stay small whatever N is.
    """
    n, k = index.shape
    if n != height * width:
        raise ValueError(f"index has {n} rows but the image has {height}x{width} = {height * width} tokens")
    out = torch.empty_like(index)
    rows = max(1, _CHUNK_ROWS_ELEMENTS // max(k, 1))
    for r0 in range(0, n, rows):
        out[r0 : r0 + rows] = _bias_ids_rows(index[r0 : r0 + rows].long(), r0, width, local, samples, dilation)
    return out


def _bias_ids_rows(
    index: torch.Tensor, first_row: int, width: int, local: int, samples: int, dilation: int
) -> torch.Tensor:
    m, k = index.shape
    dev = index.device
    q = torch.arange(first_row, first_row + m, device=dev).unsqueeze(1)
    key = index.clamp_min(0)
    qy, qx = q // width, q % width
    ky, kx = key // width, key % width
    slot = torch.arange(k, device=dev).unsqueeze(0)
    is_local = slot < local * local
    span = 2 * local - 1
    dy = (ky - qy).clamp(-(local - 1), local - 1)
    dx = (kx - qx).clamp(-(local - 1), local - 1)
    local_id = (dy + local - 1) * span + (dx + local - 1)
    g = samples
    py = (ky // dilation - qy // dilation).clamp(-g, g)
    px = (kx // dilation - qx // dilation).clamp(-g, g)
    global_id = span * span + (py + g) * (2 * g + 1) + (px + g)
    ids = torch.where(is_local, local_id, global_id)
    return torch.where(index >= 0, ids, torch.zeros_like(ids))


class DLSGCandidates:
    """Builds (and, at inference, caches) the first block's list and its bias ids.

    In training a fresh list is drawn on every call with a generator seeded from torch's global RNG
    (so a resumed run that restores the RNG state draws the same lists): one random sample per
    global d x d patch, shared by all queries. At inference each patch contributes its centre
    (``dlsg_index`` without a generator: deterministic) and the list is cached per
    (height, width, dilation, device), keeping the ``cache_size`` most recently used.
    """

    def __init__(self, local: int, samples: int, cache_size: int = 4) -> None:
        self.local, self.samples, self.cache_size = local, samples, cache_size
        # bounded (least recently used first out): evaluating a dataset of many image sizes must not
        # keep one O(N K) list per size on the device
        self._cache: OrderedDict[tuple[int, int, int, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __call__(
        self, height: int, width: int, dilation: int, device: torch.device, *, training: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (index (N, K) int32, bias ids (N, K) int32) on ``device`` (uninitialised tensors of
        those shapes on the meta device, where only shapes matter)."""
        key = (height, width, dilation, str(device))
        if not training and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if device.type == "meta":  # shapes only (FLOP counting on meta models): no list is built
            shape = (height * width, self.local**2 + self.samples**2)
            empty = torch.empty(shape, dtype=torch.int32, device=device)
            return empty, torch.empty_like(empty)
        gen = None  # inference: the patch centres (deterministic)
        if training:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))  # from torch's global RNG
            gen = torch.Generator().manual_seed(seed)
        # int32 halves the memory of int64; every later list keeps the dtype of this one
        index = sr_kernels.dlsg_index(
            height, width, local=self.local, samples=self.samples, dilation=dilation, generator=gen
        ).to(torch.int32)
        ids = dlsg_bias_ids(index, height, width, local=self.local, samples=self.samples, dilation=dilation)
        index, ids = index.to(device), ids.to(device)
        if not training and self.cache_size > 0:
            self._cache[key] = (index, ids)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return index, ids

    def clear(self) -> None:
        """Forget the cached inference lists."""
        self._cache.clear()
