"""gsplat's densification strategies, usable on every device.

We reuse ``gsplat.strategy.DefaultStrategy`` and ``MCMCStrategy`` as they are. Two of the
functions their operations call run only as CUDA kernels in gsplat 1.5.3: the MCMC
relocation rule and ``quat_scale_to_covar_preci``. ``enable_cpu_fallbacks`` wraps both
in gsplat's strategy-ops module so that CUDA tensors still take gsplat's kernels and
other tensors take the torch versions below.

Our rasterizers always give ``radii`` as [C, N, 2] (one radius per image axis, as gsplat
1.5 does); gsplat before 1.5 (nerfstudio 1.1.5 pins 1.4.0) gives and its strategies read
[C, N]. ``strategy_info`` hands the strategies the shape the installed gsplat expects.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import torch
from torch import Tensor

from snap3d.cameras import quat_to_rotmat


def relocation_torch(
    opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor
) -> tuple[Tensor, Tensor]:
    """Opacity and scale of each of ``ratios`` copies of a Gaussian (MCMC-3DGS, eq. 9).

    A Gaussian of opacity o split into n copies keeps its opacity when each copy has
    o' = 1 - (1 - o)^(1/n), and keeps its look when the scales are multiplied by
    o / sum_{i=1..n} sum_{k<i} C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1).

    Args:
        opacities: [N] in (0, 1).
        scales: [N,3] linear scales.
        ratios: [N] number of copies, clamped to [1, n_max].
        binoms: [n_max, n_max] binomial coefficients C(n, k).

    Returns:
        (new_opacities [N], new_scales [N,3]).
    """
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).long()
    new_opa = 1.0 - (1.0 - opacities).pow(1.0 / n.to(opacities.dtype))
    k = torch.arange(n_max, device=opacities.device, dtype=opacities.dtype)
    signs = torch.where(k.long() % 2 == 0, 1.0, -1.0).to(opacities.dtype)
    terms = signs / torch.sqrt(k + 1) * new_opa[:, None].pow(k + 1)  # [N, n_max]
    # sum over i = 1..n of C(i-1, k) is the cumulative sum of binomial rows.
    row_sums = torch.cumsum(binoms.to(opacities), dim=0)  # row j: sum_{i<=j} C(i, k)
    weights = row_sums[n - 1]  # [N, n_max]
    denom = (weights * terms).sum(-1)
    return new_opa, scales * (opacities / denom)[:, None]


def covariances_torch(quats: Tensor, scales: Tensor) -> Tensor:
    """[...,3,3] covariances R S S^T R^T from quaternions (w,x,y,z) and linear scales."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


@functools.cache
def strategies_take_radius_pairs() -> bool:
    """Whether the installed gsplat's strategies read ``radii`` as [..., 2] (gsplat >= 1.5)."""
    from gsplat import __version__

    match = re.match(r"(\d+)\.(\d+)", __version__)
    return match is None or (int(match[1]), int(match[2])) >= (1, 5)


def strategy_info(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` of a render, as the installed gsplat's densification strategies read it.

    With gsplat >= 1.5 it is ``meta`` itself. Before 1.5 the strategies take one radius per
    Gaussian and camera: a copy of ``meta`` whose ``radii`` [C, N, 2] (non-packed, as our
    rasterizers give them) become [C, N], the
    larger of the two (gsplat 1.4's own radius is the larger axis too; culled Gaussians keep
    0). The other entries are the same objects, so ``means2d``'s gradient still reaches
    the strategy.
    """
    radii = meta.get("radii")
    if radii is None or radii.ndim != 3 or strategies_take_radius_pairs():
        return meta
    return {**meta, "radii": radii.amax(dim=-1)}


@functools.cache
def enable_cpu_fallbacks() -> None:
    """Route gsplat's CUDA-only helpers used by its strategies to torch off CUDA."""
    from gsplat.strategy import ops

    cuda_relocation = ops.compute_relocation
    cuda_covar = ops.quat_scale_to_covar_preci

    def compute_relocation(opacities, scales, ratios, binoms):
        if opacities.is_cuda:
            return cuda_relocation(opacities, scales, ratios, binoms)
        return relocation_torch(opacities, scales, ratios, binoms)

    def quat_scale_to_covar_preci(
        quats, scales, compute_covar=True, compute_preci=True, triu=False
    ):
        if quats.is_cuda:
            return cuda_covar(quats, scales, compute_covar, compute_preci, triu)
        if triu or compute_preci:
            raise NotImplementedError("only full covariances are needed by the strategies")
        return covariances_torch(quats, scales), None

    ops.compute_relocation = compute_relocation
    ops.quat_scale_to_covar_preci = quat_scale_to_covar_preci
