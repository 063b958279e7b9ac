"""Published PSNR/SSIM (Y channel, crop = scale) of the project's models, as printed in the papers.

Every figure below was read from the paper texts in ``shared/papers/``; each row names its table.
Nothing is derived or re-computed. Known oddities are kept as printed and noted.

* ESC (``003_...``): Table 2 (trained on DIV2K) and Table 4 (trained on DFLIP).
* SST (``002_...``): Table 2 (DF2K) and Table 3 (DFLIP). The extracted text lost the scale column;
  rows come in x2, x3, x4 order (the parameter counts 11.7M/11.9M/12.1M for SST confirm it).
  "+" variants use larger windows and training patches. SST-light rows are left out: the extracted
  text prints both lightweight variants as "SST-lt" and cannot tell them apart.
* IET (``000_...``): Table 4 (classical SR, DF2K) and Table 5 (lightweight SR).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DATASETS = ("set5", "set14", "b100", "urban100", "manga109", "div2k-val", "lsdir-val")


@dataclass(frozen=True)
class PaperRow:
    """One published row: model, scale, training data, source table and {dataset: (PSNR, SSIM)}."""

    model: str
    scale: int
    training: str
    source: str
    results: dict[str, tuple[float, float]]
    note: str = ""


_COLS5 = ("set5", "set14", "b100", "urban100", "manga109")
_COLS7 = (*_COLS5, "div2k-val", "lsdir-val")


def _row(model: str, scale: int, training: str, source: str, text: str, note: str = "") -> PaperRow:
    """Parse 'p/s p/s ...' (Set5, Set14, B100, Urban100, Manga109[, DIV2K-val, LSDIR-val])."""
    pairs = [tuple(float(v) for v in cell.split("/")) for cell in text.split()]
    cols = _COLS5 if len(pairs) == 5 else _COLS7
    return PaperRow(model, scale, training, source, dict(zip(cols, pairs, strict=True)), note)


_ESC_T2 = "ESC paper, Table 2 (classic SR, trained on DIV2K)"
_ESC_T4 = "ESC paper, Table 4 (classic SR, trained on DFLIP)"
_SST_T2 = "SST paper, Table 2 (trained on DF2K)"
_SST_T3 = "SST paper, Table 3 (trained on DFLIP)"
_IET_T4 = "IET paper, Table 4 (classical SR)"
_IET_T5 = "IET paper, Table 5 (lightweight SR)"

PAPER_RESULTS: tuple[PaperRow, ...] = (
    # ESC paper, Table 2.
    _row("ESC-FP", 2, "DIV2K", _ESC_T2, "38.27/0.9617 34.09/0.9219 32.37/0.9022 33.22/0.9375 39.40/0.9784"),
    _row("ESC-light", 2, "DIV2K", _ESC_T2, "38.24/0.9615 33.98/0.9211 32.35/0.9020 33.05/0.9363 39.33/0.9786"),
    _row("ESC", 2, "DIV2K", _ESC_T2, "38.35/0.9619 34.11/0.9223 32.41/0.9027 33.46/0.9395 39.54/0.9790"),
    _row("ESC-FP", 3, "DIV2K", _ESC_T2, "34.72/0.9300 30.67/0.8483 29.30/0.8107 29.12/0.8706 34.56/0.8706",
         note="Manga109 SSIM 0.8706 is printed so in the paper (it repeats the Urban100 value)"),
    _row("ESC-light", 3, "DIV2K", _ESC_T2, "34.61/0.9295 30.52/0.8475 29.26/0.8102 28.93/0.8679 34.33/0.9495"),
    _row("ESC", 3, "DIV2K", _ESC_T2, "34.84/0.9308 30.74/0.8493 29.34/0.8118 29.28/0.8739 34.66/0.9512"),
    _row("ESC-FP", 4, "DIV2K", _ESC_T2, "32.56/0.8897 28.87/0.7889 27.75/0.7435 26.90/0.8098 31.40/0.9192",
         note="Set5 SSIM 0.8897 is printed so in the paper"),
    _row("ESC-light", 4, "DIV2K", _ESC_T2, "32.52/0.8995 28.87/0.7878 27.72/0.7423 26.76/0.8058 31.26/0.9173"),
    _row("ESC", 4, "DIV2K", _ESC_T2, "32.68/0.9011 28.93/0.7902 27.80/0.7447 27.07/0.8144 31.54/0.9207"),
    # ESC paper, Table 4.
    _row("ESC", 2, "DFLIP", _ESC_T4, "38.34/0.9618 34.42/0.9235 32.50/0.9036 33.86/0.9424 39.73/0.9795"),
    _row("ESC", 3, "DFLIP", _ESC_T4, "34.85/0.9312 30.97/0.8511 29.41/0.8135 29.70/0.8799 34.94/0.9525"),
    _row("ESC", 4, "DFLIP", _ESC_T4, "32.79/0.9025 29.06/0.7927 27.85/0.7466 27.45/0.8229 31.87/0.9239"),
    # SST paper, Table 2.
    _row("SST", 2, "DF2K", _SST_T2, "38.63/0.9629 34.72/0.9258 32.55/0.9042 34.61/0.9474 40.31/0.9808"),
    _row("SST+", 2, "DF2K", _SST_T2, "38.63/0.9631 34.89/0.9273 32.62/0.9053 34.88/0.9488 40.44/0.9812"),
    _row("SST-L", 2, "DF2K", _SST_T2, "38.65/0.9631 34.86/0.9270 32.60/0.9050 34.78/0.9485 40.44/0.9812"),
    _row("SST-L+", 2, "DF2K", _SST_T2, "38.64/0.9630 34.94/0.9273 32.61/0.9050 35.01/0.9497 40.56/0.9815"),
    _row("SST", 3, "DF2K", _SST_T2, "35.10/0.9323 31.00/0.8533 29.46/0.8149 30.35/0.8909 35.56/0.9554"),
    _row("SST+", 3, "DF2K", _SST_T2, "35.19/0.9335 31.08/0.8553 29.54/0.8170 30.59/0.8941 35.66/0.9560"),
    _row("SST-L", 3, "DF2K", _SST_T2, "35.13/0.9328 31.02/0.8544 29.47/0.8152 30.52/0.8934 35.61/0.9557"),
    _row("SST-L+", 3, "DF2K", _SST_T2, "35.25/0.9337 31.16/0.8550 29.56/0.8174 30.75/0.8962 35.83/0.9568"),
    _row("SST", 4, "DF2K", _SST_T2, "33.15/0.9059 29.21/0.7966 27.96/0.7505 28.08/0.8389 32.52/0.9295"),
    _row("SST+", 4, "DF2K", _SST_T2, "33.00/0.9054 29.21/0.7971 27.96/0.7511 28.23/0.8427 32.66/0.9308"),
    _row("SST-L", 4, "DF2K", _SST_T2, "33.08/0.9056 29.25/0.7980 27.96/0.7511 28.23/0.8432 32.64/0.9305"),
    _row("SST-L+", 4, "DF2K", _SST_T2, "33.12/0.9057 29.23/0.7973 27.98/0.7512 28.39/0.8466 32.85/0.9322"),
    # SST paper, Table 3.
    _row("SST-L", 2, "DFLIP", _SST_T3,
         "38.70/0.9635 35.06/0.9274 32.69/0.9058 35.35/0.9515 40.64/0.9817 37.21/0.9528 32.97/0.9325"),
    _row("SST-L+", 2, "DFLIP", _SST_T3,
         "38.78/0.9637 35.28/0.9288 32.73/0.9064 35.63/0.9530 40.86/0.9821 37.32/0.9535 33.12/0.9338"),
    _row("SST-L", 3, "DFLIP", _SST_T3,
         "35.24/0.9339 31.47/0.8567 29.57/0.8177 31.22/0.9010 35.90/0.9570 33.45/0.9026 29.21/0.8587"),
    _row("SST-L+", 3, "DFLIP", _SST_T3,
         "35.33/0.9345 31.54/0.8576 29.64/0.8193 31.53/0.9046 36.12/0.9580 33.55/0.9037 29.33/0.8609"),
    _row("SST-L", 4, "DFLIP", _SST_T3,
         "33.25/0.9080 29.58/0.8016 28.07/0.7541 28.90/0.8549 33.00/0.9334 31.44/0.8584 27.31/0.7972"),
    _row("SST-L+", 4, "DFLIP", _SST_T3,
         "33.10/0.9067 29.58/0.8016 28.06/0.7541 29.06/0.8583 33.18/0.9345 31.50/0.8594 27.37/0.7991"),
    # IET paper, Tables 4 and 5.
    _row("IET", 2, "DF2K", _IET_T4, "38.74/0.9636 35.09/0.9286 32.71/0.9064 35.07/0.9499 40.61/0.9816"),
    _row("IET", 3, "DF2K", _IET_T4, "35.20/0.9337 31.23/0.8571 29.61/0.8185 30.81/0.8966 35.82/0.9566"),
    _row("IET", 4, "DF2K", _IET_T4, "33.20/0.9068 29.35/0.7994 28.06/0.7535 28.43/0.8464 32.81/0.9318"),
    _row("IET-light", 2, "DIV2K", _IET_T5, "38.44/0.9623 34.28/0.9245 32.50/0.9038 34.00/0.9433 39.75/0.9793"),
    _row("IET-light", 3, "DIV2K", _IET_T5, "34.90/0.9314 30.82/0.8505 29.41/0.8134 29.73/0.8807 34.88/0.9524"),
    _row("IET-light", 4, "DIV2K", _IET_T5, "32.69/0.9019 29.00/0.7908 27.85/0.7464 27.40/0.8225 31.73/0.9227"),
)


def normalize_name(name: str) -> str:
    """Comparable form of a model name: 'SST-L+', 'sst_l_plus' and 'sst-lplus' all give 'sstlplus';
    'ESC-lt' and 'esc-light' both give 'esclight'."""
    n = name.lower().replace("+", "plus")
    n = re.sub(r"[^a-z0-9]", "", n)
    return re.sub(r"lt$", "light", n)


def paper_rows(model: str, scale: int) -> list[PaperRow]:
    """Published rows for registry name ``model`` at ``scale`` (possibly several training sets)."""
    key = normalize_name(model)
    return [r for r in PAPER_RESULTS if normalize_name(r.model) == key and r.scale == scale]
