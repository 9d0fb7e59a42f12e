"""Initial point clouds, and the scene bounds taken from them or from the cameras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from snap3d.cameras import Cameras
from snap3d.errors import Snap3dError
from snap3d.io.ply import read_ply_vertices
from snap3d.io.splats import read_bytes


def _color_max(dtype: np.dtype) -> float:
    """Full-scale value of a colour channel: integers span their range, floats [0,1]."""
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.unsignedinteger) else 1.0


def read_ply_points(path: Path) -> tuple[Tensor, Tensor | None]:
    """Read a point cloud from a PLY file (ASCII or binary).

    Returns:
        points [P,3] float32 (x, y, z as stored) and colours [P,3] float32 in [0,1] from
        its red/green/blue properties (uchar/ushort scaled, floats as they are), or None
        when it has none.
    """
    data = read_bytes(path)
    columns = read_ply_vertices(data, path)
    missing = [axis for axis in "xyz" if axis not in columns]
    if missing:
        raise Snap3dError(f"PLY vertex element lacks {', '.join(missing)}", path)
    points = torch.from_numpy(np.stack([columns[a] for a in "xyz"], 1).astype(np.float32))
    if not bool(torch.isfinite(points).all()):
        raise Snap3dError("point cloud has NaN or infinite coordinates", path)
    channels = ("red", "green", "blue")
    if not all(c in columns for c in channels):
        return points, None
    colors = np.stack([columns[c] / _color_max(columns[c].dtype) for c in channels], 1)
    return points, torch.from_numpy(colors.astype(np.float32)).clamp(0, 1)


def bounds_from_points(points: Tensor, pad: float = 0.1) -> Tensor:
    """[2,3] box holding a point cloud [P,3] robustly: per axis, its 1st to 99th
    percentile, widened on every side by ``pad`` times the largest of those extents."""
    lo, hi = torch.from_numpy(np.percentile(points.double().numpy(), [1, 99], axis=0))
    margin = pad * float((hi - lo).max().clamp_min(1e-6))
    return torch.stack([lo - margin, hi + margin]).float()


def bounds_from_cameras(cameras: Cameras, near_far: Tensor | None = None) -> Tensor:
    """[2,3] box around the region the cameras look at.

    It holds every camera centre and the points where each camera's centre and corner
    rays reach the depths ``near_far [N,2]`` (distances along the viewing axis, as LLFF
    stores them). Without them the rays go to twice each camera's depth of the point the
    viewing axes converge on (``focus_depths``).
    """
    if near_far is None:
        near_far = torch.stack([torch.zeros(len(cameras)), 2 * focus_depths(cameras)], -1)
    w, h = cameras.width, cameras.height
    pixels = torch.tensor([[0, 0], [w, 0], [0, h], [w, h], [w / 2, h / 2]], dtype=torch.float32)
    n, k = len(cameras), len(pixels)
    origins, dirs = cameras.rays_at(
        torch.arange(n).repeat_interleave(k), pixels.repeat(n, 1).to(cameras.Ks)
    )
    # A ray reaches depth z (along the viewing axis) at distance z / cos(angle to the axis).
    cosines = (dirs * cameras.forward.repeat_interleave(k, 0)).sum(-1, keepdim=True)
    depths = near_far.to(dirs).repeat_interleave(k, 0)
    ends = [origins + dirs * depths[:, j : j + 1] / cosines.clamp_min(1e-3) for j in (0, 1)]
    everything = torch.cat([cameras.centers, *ends])
    return torch.stack([everything.min(0).values, everything.max(0).values]).float()


def focus_depths(cameras: Cameras) -> Tensor:
    """[N] depth, along each camera's viewing axis, of the point nearest to all the axes
    in the least-squares sense (the scene centre for inward-looking captures).

    When the axes are (nearly) parallel or that point lies behind the cameras, every
    depth is the spread of the camera centres (1 for a single camera).
    """
    centers, forward = cameras.centers.double(), cameras.forward.double()
    # sum_i (I - f_i f_i^T) (p - o_i) = 0: the normal equations of the distances to the axes.
    projectors = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]
    A = projectors.sum(0)
    b = (projectors @ centers[:, :, None]).sum(0)
    if float(torch.linalg.eigvalsh(A)[0]) > 1e-2 * len(cameras):
        focus = torch.linalg.solve(A, b)[:, 0]
        depths = ((focus - centers) * forward).sum(-1)
        median = float(depths.median())
        if median > 0:
            return depths.clamp_min(0.1 * median).float()
    spread = float((centers - centers.mean(0)).norm(dim=-1).max())
    return torch.full((len(cameras),), spread if spread > 0 else 1.0)
