"""Real spherical harmonics up to degree 4, in the 3DGS sign convention."""

from __future__ import annotations

import torch
from torch import Tensor

MAX_SH_DEGREE = 4


def sh_bases(degree: int, dirs: Tensor) -> Tensor:
    """Real spherical-harmonic basis functions at unit directions.

    Bases are ordered by degree ``l`` and then by order ``m = -l..l``, with the
    Condon-Shortley phase used by 3D Gaussian Splatting (``Y_1 = c (-y, z, -x)``).

    Args:
        degree: highest degree, 0 to 4.
        dirs: unit directions. [..., 3]

    Returns:
        basis values. [..., (degree + 1)²]
    """
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    x, y, z = dirs.unbind(-1)
    bases = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        c1 = 0.4886025119029199
        bases += [-c1 * y, c1 * z, -c1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        bases += [
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.31539156525252005 * (2 * zz - xx - yy),
            -1.0925484305920792 * xz,
            0.5462742152960396 * (xx - yy),
        ]
    if degree >= 3:
        bases += [
            -0.5900435899266435 * y * (3 * xx - yy),
            2.890611442640554 * xy * z,
            -0.4570457994644658 * y * (4 * zz - xx - yy),
            0.3731763325901154 * z * (2 * zz - 3 * xx - 3 * yy),
            -0.4570457994644658 * x * (4 * zz - xx - yy),
            1.445305721320277 * z * (xx - yy),
            -0.5900435899266435 * x * (xx - 3 * yy),
        ]
    if degree >= 4:
        bases += [
            2.5033429417967046 * xy * (xx - yy),
            -1.7701307697799304 * yz * (3 * xx - yy),
            0.9461746957575601 * xy * (7 * zz - 1),
            -0.6690465435572892 * yz * (7 * zz - 3),
            0.10578554691520431 * (zz * (35 * zz - 30) + 3),
            -0.6690465435572892 * xz * (7 * zz - 3),
            0.47308734787878004 * (xx - yy) * (7 * zz - 1),
            -1.7701307697799304 * xz * (xx - 3 * yy),
            0.6258357354491761 * (xx * (xx - 3 * yy) - yy * (3 * xx - yy)),
        ]
    return torch.stack(bases, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluate spherical-harmonic colours along view directions.

    Args:
        degree: number of bands to use minus one; ``(degree + 1)² <= K``.
        dirs: view directions, need not be normalised. [..., 3]
        coeffs: SH coefficients per colour channel. [..., K, 3]

    Returns:
        ``sum_k Y_k(dir) coeffs_k``, without offset or clamping. [..., 3]
    """
    n_bases = (degree + 1) ** 2
    if coeffs.shape[-2] < n_bases:
        raise ValueError(f"SH degree {degree} needs {n_bases} coefficients, got {coeffs.shape[-2]}")
    bases = sh_bases(degree, torch.nn.functional.normalize(dirs, dim=-1))
    return (bases[..., None] * coeffs[..., :n_bases, :]).sum(dim=-2)
