"""Gaussian blur kernels of the two conventions used by blind SR papers.

Coordinates: ``x`` is the column offset and ``y`` the row offset. Angles are radians here
(callers convert DASR's test-time degrees). Every function works in float64 on the device of
its arguments and returns float64 kernels of shape (B, k, k) that sum to 1; callers cast to the
images' dtype.

* **DASR** (Wang et al., CVPR 2021): a centred k x k kernel on integer offsets -k//2..k//2.
  ``sigma``, ``lambda_1`` and ``lambda_2`` are standard deviations. Nothing is truncated.
* **MANet / CDSR** (Liang et al., ICCV 2021; Zhou et al., ACM MM 2022; IKC's layout): the
  Gaussian lives on a ``(k - s + 1)``-wide grid centred on that grid, values below
  ``eps * max`` (float64 machine epsilon) are set to 0, it is normalised, and written into the
  **top-left** corner of a k x k array of zeros. The isotropic ``sigma`` is a standard
  deviation, but the anisotropic ``sig1``/``sig2`` are **variances** (eigenvalues of the
  covariance). ``sigma == 0`` gives a centred delta.
"""
import torch
from torch import Tensor

_EPS64 = torch.finfo(torch.float64).eps


def gaussian_covariance(var_1: Tensor, var_2: Tensor, theta: Tensor) -> Tensor:
    """Covariance with eigenvalue ``var_1`` along (cos theta, sin theta) in (x, y) and ``var_2``
    across it.  ``(B,), (B,), (B,) radians -> (B, 2, 2)`` float64, first coordinate = x."""
    var_1, var_2, theta = (torch.as_tensor(t, dtype=torch.float64) for t in (var_1, var_2, theta))
    cos, sin = torch.cos(theta), torch.sin(theta)
    xx = var_1 * cos ** 2 + var_2 * sin ** 2
    yy = var_1 * sin ** 2 + var_2 * cos ** 2
    xy = (var_1 - var_2) * cos * sin
    return torch.stack([torch.stack([xx, xy], -1), torch.stack([xy, yy], -1)], -2)


def _offsets(size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(size, size) column and row offsets from the grid's centre ``(size - 1) / 2``."""
    axis = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    return axis.view(1, -1).expand(size, size), axis.view(-1, 1).expand(size, size)


def _isotropic_exponent(sigma: Tensor, size: int) -> Tensor:
    """``-(x^2 + y^2) / (2 sigma^2)`` on a centred grid.  (B,) -> (B, size, size)."""
    x, y = _offsets(size, sigma.device)
    return -(x ** 2 + y ** 2) / (2 * sigma.view(-1, 1, 1) ** 2)


def _anisotropic_exponent(covariance: Tensor, size: int) -> Tensor:
    """``-1/2 [x y] cov^-1 [x y]^T`` on a centred grid.  (B, 2, 2) -> (B, size, size)."""
    x, y = _offsets(size, covariance.device)
    a, b, d = covariance[:, 0, 0], covariance[:, 0, 1], covariance[:, 1, 1]
    det = (a * d - b * b).view(-1, 1, 1)
    a, b, d = (t.view(-1, 1, 1) for t in (a, b, d))
    return -0.5 * (d * x ** 2 - 2 * b * x * y + a * y ** 2) / det


def _normalise(kernel: Tensor) -> Tensor:
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True)


def delta_kernel(batch: int, size: int = 21, device: torch.device | str = "cpu") -> Tensor:
    """Centred delta (the identity blur).  -> (batch, size, size) float64."""
    kernel = torch.zeros(batch, size, size, dtype=torch.float64, device=device)
    kernel[:, size // 2, size // 2] = 1.0
    return kernel


def _check_size(size: int) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")


def _as_batch(values: Tensor | float) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1)


def dasr_isotropic_kernel(sigma: Tensor, size: int = 21) -> Tensor:
    """DASR isotropic kernel, centred.  sigma (B,) std-devs >= 0 -> (B, size, size) float64.

    ``sigma == 0`` gives a delta (DASR skips the blur in that case, which is the same)."""
    _check_size(size)
    sigma = _as_batch(sigma)
    if (sigma < 0).any():
        raise ValueError(f"sigma must be >= 0, got {sigma.tolist()}")
    kernel = _normalise(torch.exp(_isotropic_exponent(sigma.clamp_min(1e-12), size)))
    return torch.where((sigma == 0).view(-1, 1, 1), delta_kernel(len(sigma), size, sigma.device), kernel)


def dasr_anisotropic_kernel(lambda_1: Tensor, lambda_2: Tensor, theta: Tensor, size: int = 21) -> Tensor:
    """DASR anisotropic kernel, centred: covariance ``R(theta) diag(l1^2, l2^2) R(theta)^T``.

    lambda_1, lambda_2 (B,) std-devs > 0 (lambda_1 acts along x when theta = 0), theta (B,)
    radians -> (B, size, size) float64."""
    _check_size(size)
    lambda_1, lambda_2, theta = _as_batch(lambda_1), _as_batch(lambda_2), _as_batch(theta)
    if (lambda_1 <= 0).any() or (lambda_2 <= 0).any():
        raise ValueError("anisotropic lambda_1 and lambda_2 must be > 0")
    covariance = gaussian_covariance(lambda_1 ** 2, lambda_2 ** 2, theta)
    return _normalise(torch.exp(_anisotropic_exponent(covariance, size)))


def _manet_place(small: Tensor, size: int) -> Tensor:
    """Truncate below eps*max, normalise, write into the top-left of a size x size array."""
    small = torch.where(small < _EPS64 * small.amax(dim=(-2, -1), keepdim=True), 0.0, small)
    kernel = torch.zeros(small.shape[0], size, size, dtype=torch.float64, device=small.device)
    grid = small.shape[-1]
    kernel[:, :grid, :grid] = _normalise(small)
    return kernel


def _manet_grid(scale: int, size: int) -> int:
    _check_size(size)
    if scale not in (2, 3, 4):
        raise ValueError(f"MANet/CDSR kernels are defined for scale 2, 3 or 4, got {scale}")
    return size - scale + 1


def manet_isotropic_kernel(sigma: Tensor, scale: int, size: int = 21) -> Tensor:
    """MANet/CDSR isotropic kernel on the top-left ``(size-scale+1)`` grid.

    sigma (B,) std-devs >= 0 -> (B, size, size) float64; ``sigma == 0`` is a centred delta."""
    grid = _manet_grid(scale, size)
    sigma = _as_batch(sigma)
    if (sigma < 0).any():
        raise ValueError(f"sigma must be >= 0, got {sigma.tolist()}")
    kernel = _manet_place(torch.exp(_isotropic_exponent(sigma.clamp_min(1e-12), grid)), size)
    return torch.where((sigma == 0).view(-1, 1, 1), delta_kernel(len(sigma), size, sigma.device), kernel)


def manet_anisotropic_kernel(sig1: Tensor, sig2: Tensor, theta: Tensor, scale: int, size: int = 21) -> Tensor:
    """MANet/CDSR anisotropic kernel on the top-left ``(size-scale+1)`` grid.

    sig1, sig2 (B,) **variances** > 0 (eigenvalues; sig1 along (cos, sin) theta), theta (B,)
    radians -> (B, size, size) float64."""
    grid = _manet_grid(scale, size)
    sig1, sig2, theta = _as_batch(sig1), _as_batch(sig2), _as_batch(theta)
    if (sig1 <= 0).any() or (sig2 <= 0).any():
        raise ValueError("anisotropic sig1 and sig2 (variances) must be > 0")
    covariance = gaussian_covariance(sig1, sig2, theta)
    return _manet_place(torch.exp(_anisotropic_exponent(covariance, grid)), size)
