"""HexPlane: a 4D (x, y, z, t) feature field factorised into six 2D feature planes.

Each of the planes xy, xz, yz, xt, yt, zt is a ``[C, H, W]`` grid sampled bilinearly at
the projection of a point onto it; the six samples are multiplied (Hadamard product)
and the products of every resolution are concatenated (HexPlane, K-Planes, 4DGaussians).
The time planes start at one, so that at initialisation the field does not depend on
time; ``time_l1`` measures how far they have moved away from that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Coordinate pairs (horizontal, vertical) of the six planes; 0, 1, 2 = x, y, z and 3 = t.
PLANES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
SPATIAL_PLANES = (0, 1, 2)
TIME_PLANES = (3, 4, 5)


class HexPlane(nn.Module):
    """Multi-resolution six-plane feature field over a box and a time range.

    Args:
        bounds: [2,3] min and max corners of the box the planes span, world units;
            points outside read the border of the planes.
        time_range: (t0, t1) mapped onto the time axis of the planes.
        feature_dim: channels C of every plane.
        resolution: spatial resolution of the coarsest planes.
        time_resolution: time resolution of every plane (not multiplied by ``multires``).
        multires: spatial resolution multipliers, one set of six planes each.
        init_range: spatial planes start uniform in this range; time planes at one.
        generator: random generator for the initial values.
    """

    def __init__(
        self,
        bounds: Tensor,
        time_range: tuple[float, float],
        feature_dim: int = 32,
        resolution: int = 64,
        time_resolution: int = 25,
        multires: Sequence[int] = (1, 2),
        init_range: tuple[float, float] = (0.1, 0.5),
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        bounds = torch.as_tensor(bounds, dtype=torch.float32)
        self.register_buffer("bounds", bounds.clone())
        self.register_buffer("time_range", torch.tensor(time_range, dtype=torch.float32))
        self.feature_dim = feature_dim
        self.grids = nn.ParameterList()
        for m in multires:
            sizes = (resolution * m,) * 3 + (time_resolution,)
            for i, (a, b) in enumerate(PLANES):
                shape = (1, feature_dim, sizes[b], sizes[a])
                if i in TIME_PLANES:
                    plane = torch.ones(shape)
                else:
                    lo, hi = init_range
                    plane = lo + (hi - lo) * torch.rand(shape, generator=generator)
                self.grids.append(nn.Parameter(plane))

    @property
    def output_dim(self) -> int:
        return self.feature_dim * len(self.grids) // len(PLANES)

    def normalize(self, xyz: Tensor, t: Tensor) -> Tensor:
        """[N,4] coordinates in [-1, 1]: the box and the time range mapped onto the planes.

        Args:
            xyz: [N,3] world points.
            t: [N] times.
        """
        lo, hi = self.bounds[0], self.bounds[1]
        p = 2 * (xyz - lo) / (hi - lo).clamp_min(1e-8) - 1
        t0, t1 = self.time_range[0], self.time_range[1]
        span = t1 - t0
        tn = torch.where(span > 0, 2 * (t - t0) / span.clamp_min(1e-8) - 1, torch.zeros_like(t))
        return torch.cat([p, tn[:, None]], dim=-1)

    def forward(self, xyz: Tensor, t: Tensor) -> Tensor:
        """Features of points at times.

        Args:
            xyz: [N,3] world points.
            t: [N] times.

        Returns:
            [N, output_dim] features: per resolution, the product of the six bilinear
            plane samples, resolutions concatenated.
        """
        coords = self.normalize(xyz, t.to(xyz))
        features = []
        for s in range(0, len(self.grids), len(PLANES)):
            product = None
            for (a, b), grid in zip(PLANES, self.grids[s : s + len(PLANES)], strict=True):
                sample = sample_plane(grid, coords[:, [a, b]])
                product = sample if product is None else product * sample
            features.append(product)
        return torch.cat(features, dim=-1)

    def planes(self, which: Sequence[int]) -> list[Tensor]:
        """The [1,C,H,W] grids of plane indices ``which`` (into PLANES) at every resolution."""
        return [g for i, g in enumerate(self.grids) if i % len(PLANES) in which]

    @torch.no_grad()
    def fit_bounds(self, points: Tensor, margin: float = 0.1, quantile: float = 0.005) -> None:
        """Span the planes over ``points`` [N,3] (world): per axis their ``quantile`` and
        ``1 - quantile`` quantiles, widened by ``margin`` of the extent on each side.
        Only meaningful before the planes are trained (4DGaussians fits its planes to the
        points after the static stage)."""
        if len(points) < 2:
            return
        points = points.detach().float()
        if len(points) > 100_000:
            points = points[torch.randperm(len(points), device=points.device)[:100_000]]
        q = torch.tensor([quantile, 1 - quantile], device=points.device)
        lo, hi = torch.quantile(points, q, dim=0)
        pad = margin * (hi - lo).clamp_min(1e-3)
        self.bounds = torch.stack([lo - pad, hi + pad]).to(self.bounds)

    @torch.no_grad()
    def hold_after(self, t: float, extrapolate: bool = False) -> None:
        """Continue the field past time ``t``: every time-plane cell later than the one
        that frames at ``t`` read last takes that cell's values, so that later times start
        from the deformation at ``t`` (a time curriculum's new frames begin where the
        trained ones end, not at the initial, time-independent field). With
        ``extrapolate`` the later cells continue the last two cells' difference linearly
        instead (constant velocity in the planes' values)."""
        t0, t1 = float(self.time_range[0]), float(self.time_range[1])
        for grid in self.planes(TIME_PLANES):
            cells = grid.shape[2]
            u = 0.0 if t1 <= t0 else (t - t0) / (t1 - t0) * (cells - 1)
            last = min(max(int(math.ceil(u - 1e-6)), 0), cells - 1)
            if last + 1 >= cells:
                continue
            hold_rows(grid[0].transpose(0, 1), last, extrapolate)  # [T,C,W], a view

    def total_variation(self) -> Tensor:
        """Mean squared difference of neighbouring cells of the spatial planes."""
        return torch.stack([plane_tv(g) for g in self.planes(SPATIAL_PLANES)]).mean()

    def time_smoothness(self) -> Tensor:
        """Mean squared second difference along time of the time planes."""
        return torch.stack([time_second_difference(g) for g in self.planes(TIME_PLANES)]).mean()

    def time_l1(self) -> Tensor:
        """Mean |1 - value| of the time planes: zero while the field ignores time."""
        return torch.stack([(1 - g).abs().mean() for g in self.planes(TIME_PLANES)]).mean()


@torch.no_grad()
def hold_rows(values: Tensor, last: int, extrapolate: bool = False) -> None:
    """In place: the rows of ``values`` [R,...] after row ``last`` copy it, or with
    ``extrapolate`` (and an earlier row) continue the change from row ``last - 1``
    linearly."""
    held = values[last : last + 1]
    if extrapolate and last > 0:
        k = torch.arange(1, len(values) - last, device=values.device, dtype=values.dtype)
        step = held - values[last - 1 : last]
        values[last + 1 :] = held + k.reshape(-1, *[1] * (values.dim() - 1)) * step
    else:
        values[last + 1 :] = held


def sample_plane(grid: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples of a plane, corners aligned (u = -1 is the centre of column 0).

    Args:
        grid: [1,C,H,W] plane.
        uv: [N,2] coordinates in [-1, 1]: u along W, v along H; outside reads the border.

    Returns:
        [N,C] samples.
    """
    out = F.grid_sample(
        grid, uv[None, :, None, :], mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[0, :, :, 0].transpose(0, 1)


def plane_tv(grid: Tensor) -> Tensor:
    """Mean squared difference between neighbouring cells of a [1,C,H,W] plane, both axes."""
    dh = (grid[..., 1:, :] - grid[..., :-1, :]).square().mean()
    dw = (grid[..., :, 1:] - grid[..., :, :-1]).square().mean()
    return dh + dw


def time_second_difference(grid: Tensor) -> Tensor:
    """Mean squared second difference along H (the time axis) of a [1,C,T,W] time plane."""
    d = grid[..., 1:, :] - grid[..., :-1, :]
    return (d[..., 1:, :] - d[..., :-1, :]).square().mean()
