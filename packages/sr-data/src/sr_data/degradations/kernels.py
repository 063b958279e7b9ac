"""Random blur kernels of Real-ESRGAN's degradation model, drawn on a batch at once.

Every kernel is a ``(B, K, K)`` float32 tensor (``K`` odd, 21 in Real-ESRGAN) that sums to 1. A
kernel of side ``k < K`` is the ``k x k`` kernel zero-padded to ``K x K`` (Real-ESRGAN pads the same
way), so one batch can hold kernels of different sizes.

Kernel families (Real-ESRGAN, Wang et al. 2021, section 3.1; BasicSR ``degradations.py``), with
``Q(x) = x^T Sigma^-1 x`` over the pixel offset ``x = (column, row)`` from the centre and
``Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T``:

* ``iso`` / ``aniso``: Gaussian ``exp(-Q / 2)``; iso has ``sigma_y = sigma_x`` and ``theta = 0``;
* ``generalized_iso`` / ``generalized_aniso``: ``exp(-Q^beta / 2)`` (beta drawn from ``betag_range``);
* ``plateau_iso`` / ``plateau_aniso``: ``1 / (1 + Q^beta)`` (beta drawn from ``betap_range``);
* ``sinc``: the 2-D circular low-pass ``omega_c J1(omega_c r) / (2 pi r)`` (value ``omega_c^2 / (4 pi)``
  at r = 0), which produces ringing and overshoot.

Draws (all from the ``generator`` argument, a fixed number per image whatever the kernel family,
so the stream position after a call depends only on the batch size): a family by ``kernel_prob``,
a side ``k`` uniform over the odd sizes 7..K (Real-ESRGAN's ``kernel_range``), ``sigma_x``,
``sigma_y`` uniform in ``sigma_range``, ``theta`` uniform in [-pi, pi), and beta uniform in
``[lo, 1)`` or ``[1, hi)`` with probability 1/2 each (BasicSR's rule for both beta families). With
probability ``sinc_prob`` the kernel is a sinc instead, with ``omega_c`` uniform in [pi/3, pi) when
``k < 13`` and in [pi/5, pi) otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

KERNEL_FAMILIES: tuple[str, ...] = (
    "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso",
)


@dataclass(frozen=True)
class BlurSettings:
    """The blur stage of one degradation pass (Real-ESRGAN's ``blur_kernel_size``, ``kernel_list`` ...)."""

    kernel_size: int = 21  # K: the padded side; sizes are drawn from the odd numbers 7..K
    kernel_list: tuple[str, ...] = KERNEL_FAMILIES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    sigma_range: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)

    def __post_init__(self) -> None:
        if self.kernel_size < 7 or self.kernel_size % 2 == 0:
            raise ValueError(f"blur kernel_size must be odd and >= 7, got {self.kernel_size}")
        unknown = [k for k in self.kernel_list if k not in KERNEL_FAMILIES]
        if unknown:
            raise ValueError(f"blur kernel_list: unknown kernel families {unknown}; known: {', '.join(KERNEL_FAMILIES)}")
        if len(self.kernel_prob) != len(self.kernel_list) or any(p < 0 for p in self.kernel_prob) or sum(self.kernel_prob) <= 0:
            raise ValueError("blur kernel_prob must hold one non-negative probability per kernel_list entry "
                             f"(got {list(self.kernel_prob)} for {list(self.kernel_list)})")
        if not 0 <= self.sinc_prob <= 1:
            raise ValueError(f"blur sinc_prob must be in [0, 1], got {self.sinc_prob}")
        for name in ("sigma_range", "betag_range", "betap_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"blur {name} must be [low, high] with 0 < low <= high, got {[lo, hi]}")


def _uniform(n: int, lo: float | torch.Tensor, hi: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=generator.device)
    return lo + u * (hi - lo)


def kernel_grid(size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row offsets from the centre of a ``size x size`` kernel: two float32 ``(size, size)``."""
    ax = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    rows, cols = torch.meshgrid(ax, ax, indexing="ij")
    return cols, rows


def size_mask(sizes: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size, size)`` float mask: 1 inside the centred ``sizes[b] x sizes[b]`` square, 0 outside."""
    cols, rows = kernel_grid(size, sizes.device)
    half = ((sizes.float() - 1) / 2).view(-1, 1, 1)
    return ((cols.abs() <= half) & (rows.abs() <= half)).float()


def anisotropic_kernels(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor,
                        shape: torch.Tensor, size: int) -> torch.Tensor:
    """Unnormalised Gaussian-family kernels ``(B, size, size)`` from per-image parameters ``(B,)``.

    ``shape``: 0 Gaussian ``exp(-Q/2)``, 1 generalized ``exp(-Q^beta/2)``, 2 plateau ``1/(1+Q^beta)``.
    """
    cols, rows = kernel_grid(size, sigma_x.device)
    c, s = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    # rotate the offset into the kernel's principal axes: u = R^T x
    u = c * cols + s * rows
    v = -s * cols + c * rows
    q = (u / sigma_x.view(-1, 1, 1)) ** 2 + (v / sigma_y.view(-1, 1, 1)) ** 2
    qb = q.clamp_min(0) ** beta.view(-1, 1, 1)
    shape = shape.view(-1, 1, 1)
    return torch.where(shape == 0, torch.exp(-0.5 * q), torch.where(shape == 1, torch.exp(-0.5 * qb), 1.0 / (1.0 + qb)))


def sinc_kernels(omega_c: torch.Tensor, size: int) -> torch.Tensor:
    """Unnormalised circular low-pass kernels ``(B, size, size)``, cutoff ``omega_c`` ``(B,)`` in radians."""
    cols, rows = kernel_grid(size, omega_c.device)
    r = torch.sqrt(cols**2 + rows**2)
    w = omega_c.view(-1, 1, 1)
    safe_r = torch.where(r == 0, torch.ones_like(r), r)
    k = w * torch.special.bessel_j1(w * safe_r) / (2 * math.pi * safe_r)
    return torch.where(r == 0, w**2 / (4 * math.pi), k)


def normalise(kernels: torch.Tensor) -> torch.Tensor:
    """Kernels ``(B, K, K)`` scaled to sum to 1 each."""
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def pulse_kernels(batch: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Identity kernels ``(B, size, size)``: 1 at the centre (Real-ESRGAN's ``pulse_tensor``)."""
    k = torch.zeros(batch, size, size, device=device)
    k[:, size // 2, size // 2] = 1.0
    return k


def _odd_sizes(max_size: int) -> torch.Tensor:
    return torch.arange(7, max_size + 1, 2)


def random_sizes(batch: int, max_size: int, generator: torch.Generator) -> torch.Tensor:
    """``(B,)`` int64 kernel sides drawn uniformly from the odd numbers 7..max_size."""
    sizes = _odd_sizes(max_size).to(generator.device)
    idx = torch.randint(len(sizes), (batch,), generator=generator, device=generator.device)
    return sizes[idx]


def random_blur_kernels(batch: int, settings: BlurSettings, generator: torch.Generator) -> torch.Tensor:
    """Draw ``batch`` blur kernels ``(B, K, K)`` float32 on ``generator.device`` (see the module docstring)."""
    dev, size = generator.device, settings.kernel_size
    probs = torch.tensor(settings.kernel_prob, dtype=torch.float64, device=dev)
    family_idx = torch.multinomial(probs, batch, replacement=True, generator=generator)
    family_ids = torch.tensor([KERNEL_FAMILIES.index(k) for k in settings.kernel_list], device=dev)[family_idx]
    sizes = random_sizes(batch, size, generator)
    sigma_x = _uniform(batch, *settings.sigma_range, generator)
    sigma_y = _uniform(batch, *settings.sigma_range, generator)
    theta = _uniform(batch, -math.pi, math.pi, generator)
    below = torch.rand(batch, generator=generator, device=dev) < 0.5
    t = torch.rand(batch, generator=generator, device=dev)
    betag = torch.where(below, settings.betag_range[0] + t * (1 - settings.betag_range[0]),
                        1 + t * (settings.betag_range[1] - 1))
    betap = torch.where(below, settings.betap_range[0] + t * (1 - settings.betap_range[0]),
                        1 + t * (settings.betap_range[1] - 1))
    use_sinc = torch.rand(batch, generator=generator, device=dev) < settings.sinc_prob
    u = torch.rand(batch, generator=generator, device=dev)

    iso = family_ids % 2 == 0  # iso, generalized_iso, plateau_iso sit at even positions of KERNEL_FAMILIES
    sigma_y = torch.where(iso, sigma_x, sigma_y)
    theta = torch.where(iso, torch.zeros_like(theta), theta)
    shape = family_ids // 2  # 0 gaussian, 1 generalized, 2 plateau
    beta = torch.where(shape == 1, betag, betap)
    gauss = anisotropic_kernels(sigma_x, sigma_y, theta, beta, shape, size)
    lo = torch.where(sizes < 13, torch.full_like(u, math.pi / 3), torch.full_like(u, math.pi / 5))
    sinc = sinc_kernels(lo + u * (math.pi - lo), size)
    kernels = torch.where(use_sinc.view(-1, 1, 1), sinc, gauss) * size_mask(sizes, size)
    return normalise(kernels)


def random_final_sinc(batch: int, kernel_size: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Real-ESRGAN's last filter: with probability ``prob`` per image a sinc of random side (7..K) and
    cutoff uniform in [pi/3, pi), else the identity. ``(B, K, K)`` float32, each summing to 1."""
    dev = generator.device
    sizes = random_sizes(batch, kernel_size, generator)
    omega = _uniform(batch, math.pi / 3, math.pi, generator)
    use = torch.rand(batch, generator=generator, device=dev) < prob
    sinc = normalise(sinc_kernels(omega, kernel_size) * size_mask(sizes, kernel_size))
    return torch.where(use.view(-1, 1, 1), sinc, pulse_kernels(batch, kernel_size, dev))


def gaussian_kernel_1d(size: int, sigma: float | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(size,)`` float32 Gaussian taps summing to 1; ``sigma=None`` uses OpenCV's rule for
    ``getGaussianKernel(size, 0)``: ``0.3 * ((size - 1) / 2 - 1) + 0.8``."""
    if sigma is None or sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def as_tuple(values: Sequence[float] | float) -> tuple[float, ...]:
    """A YAML list (or a single number) as a tuple of floats."""
    if isinstance(values, int | float):
        return (float(values),)
    return tuple(float(v) for v in values)
