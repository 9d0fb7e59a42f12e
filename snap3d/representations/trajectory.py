"""3D point-trajectory videos (PointVid) and the trajectory regularisers.

A point-trajectory video pairs a rendered video with, for every pixel of its first
frame, the 3D world position over time of the surface point that pixel sees, and
whether that point is visible in each frame. Trajectories live in the pixel grid of the
first frame ("aligned in pixel space"), so a video model can read them as extra
channels. Any 4D scene that can carry points through time can export one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from snap3d.cameras import Cameras
from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_write

# npz key -> (dtype, shape as names); T frames of H x W pixels.
NPZ_LAYOUT = {
    "rgb": (np.uint8, ("T", "H", "W", 3)),
    "xyz": (np.float32, ("T", "H", "W", 3)),
    "visible": (np.bool_, ("T", "H", "W")),
    "times": (np.float32, ("T",)),
    "camtoworlds": (np.float32, ("T", 4, 4)),
    "Ks": (np.float32, ("T", 3, 3)),
}


@dataclass
class PointTrajectoryVideo:
    """A video with the 3D trajectories of the surface points its first frame sees.

    Attributes:
        rgb: [T,H,W,3] uint8 frames.
        xyz: [T,H,W,3] float32 world position at ``times[k]`` of the surface point seen
            through pixel (y, x) of frame 0 at ``times[0]`` (zero where frame 0 sees none).
        visible: [T,H,W] bool: that point is in front of camera k, inside its image and
            not hidden at ``times[k]``; False everywhere frame 0 sees no surface.
        times: [T] float32 scene times of the frames.
        camtoworlds: [T,4,4] float32 camera of each frame, OpenCV convention.
        Ks: [T,3,3] float32 pinhole intrinsics of each frame.
    """

    rgb: Tensor
    xyz: Tensor
    visible: Tensor
    times: Tensor
    camtoworlds: Tensor
    Ks: Tensor

    def __post_init__(self) -> None:
        arrays = {name: getattr(self, name) for name in NPZ_LAYOUT}
        check_layout({k: v.cpu().numpy() for k, v in arrays.items()}, "PointTrajectoryVideo")

    @property
    def num_frames(self) -> int:
        return self.rgb.shape[0]

    @property
    def height(self) -> int:
        return self.rgb.shape[1]

    @property
    def width(self) -> int:
        return self.rgb.shape[2]

    @property
    def cameras(self) -> Cameras:
        """The T cameras of the frames, with their times."""
        return Cameras(self.camtoworlds, self.Ks, self.width, self.height, times=self.times)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` (keys of ``NPZ_LAYOUT``), atomically."""
        path = Path(path)
        with atomic_write(path, "wb") as f:
            np.savez_compressed(f, **{k: getattr(self, k).cpu().numpy() for k in NPZ_LAYOUT})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PointTrajectoryVideo:
        """Read an ``.npz`` written by ``save``; raises Snap3dError naming what is wrong."""
        path = Path(path)
        if not path.is_file():
            raise Snap3dError("trajectory video file is missing", path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise Snap3dError(f"cannot read trajectory video: {e}", path) from e
        check_layout(arrays, path)
        return cls(**{k: torch.from_numpy(arrays[k]) for k in NPZ_LAYOUT})

    def preview_frames(self) -> list[np.ndarray]:
        """[H,2W,3] uint8 frames: the video beside the trajectories colour-coded by position.

        xyz maps to RGB linearly over the box of the visible points; points hidden in a
        frame are dimmed, pixels whose first-frame ray meets nothing are black.
        """
        xyz, visible = self.xyz.float(), self.visible
        shown = xyz[visible] if bool(visible.any()) else xyz.reshape(-1, 3)
        lo, hi = shown.min(0).values, shown.max(0).values
        colour = ((xyz - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
        tracked = visible[0][None, :, :, None]
        shade = torch.where(visible[..., None], 1.0, 0.25) * tracked
        coded = (colour * shade * 255 + 0.5).to(torch.uint8)
        return list(torch.cat([self.rgb, coded], dim=2).cpu().numpy())

    def write_preview(self, path: str | os.PathLike, fps: int = 12) -> Path:
        """Write ``preview_frames`` as an mp4 (or a folder of PNGs for other suffixes)."""
        from snap3d.render.video import write_frames

        return write_frames(self.preview_frames(), Path(path), fps=fps)


def check_layout(arrays: dict[str, np.ndarray], where: object) -> None:
    """Raise Snap3dError unless ``arrays`` hold every key of NPZ_LAYOUT with its dtype and
    consistent shapes."""
    missing = [k for k in NPZ_LAYOUT if k not in arrays]
    if missing:
        raise Snap3dError(f"trajectory video lacks {missing}", where)
    sizes: dict[str, int] = {}
    for key, (dtype, shape) in NPZ_LAYOUT.items():
        value = arrays[key]
        if value.dtype != dtype:
            raise Snap3dError(f"{key} must be {np.dtype(dtype).name}, got {value.dtype}", where)
        if value.ndim != len(shape):
            raise Snap3dError(f"{key} must have shape {list(shape)}, got {value.shape}", where)
        for name, n in zip(shape, value.shape, strict=True):
            expected = sizes.setdefault(name, n) if isinstance(name, str) else name
            if n != expected:
                raise Snap3dError(
                    f"{key} must have shape {list(shape)} with {sizes}, got {value.shape}", where
                )


def point_visibility(
    xyz: Tensor,
    cameras: Cameras,
    depth: Tensor,
    alpha: Tensor,
    tracked: Tensor,
    tolerance: float = 0.02,
) -> Tensor:
    """Whether tracked points are visible: inside each frame and not behind its surface.

    A point is hidden in frame k when the surface rendered there (opaque: ``alpha``
    above 0.5) is nearer than the point by more than ``tolerance`` times its depth.

    Args:
        xyz: [T,...,3] world positions of the points in each frame.
        cameras: T cameras (one per frame).
        depth: [T,H,W] depth rendered by each camera (along its z axis).
        alpha: [T,H,W] opacity rendered by each camera.
        tracked: [...] points that exist (others are never visible).
        tolerance: relative depth margin.

    Returns:
        [T,...] bool.
    """
    T, H, W = depth.shape
    visible = []
    for k in range(T):
        pix, z = cameras[k].project(xyz[k])
        pix, z = pix[0], z[0, ..., 0]
        inside = (z > 0) & (pix[..., 0] >= 0) & (pix[..., 0] < W)
        inside &= (pix[..., 1] >= 0) & (pix[..., 1] < H)
        col = pix[..., 0].floor().long().clamp(0, W - 1)
        row = pix[..., 1].floor().long().clamp(0, H - 1)
        surface = depth[k][row, col]
        opaque = alpha[k][row, col] > 0.5
        in_front = z <= surface * (1 + tolerance)
        visible.append(tracked & inside & opaque & in_front)
    return torch.stack(visible)


# -- regularisers ----------------------------------------------------------------------


def between_frames(frames: Tensor, times: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For times [N] among sorted frame times ``frames`` [F]: the frames before and
    after ([N] indices) and the weight [N,1] of the later one (clamped to the first and
    last frames)."""
    if len(frames) == 1:
        zero = torch.zeros(len(times), dtype=torch.long, device=times.device)
        return zero, zero, times.new_zeros(len(times), 1)
    hi = torch.searchsorted(frames, times.contiguous()).clamp(1, len(frames) - 1)
    lo = hi - 1
    w = ((times - frames[lo]) / (frames[hi] - frames[lo])).clamp(0, 1)[:, None]
    return lo, hi, w


def nearest_neighbors(points: Tensor, k: int, queries: Tensor | None = None) -> Tensor:
    """[Q,k] indices into ``points`` [P,3] of the k nearest to each query [Q,3] (default:
    each point itself, excluding it)."""
    exclude_self = queries is None
    queries = points if queries is None else queries
    k = min(k, points.shape[0] - int(exclude_self))
    out = []
    for s in range(0, queries.shape[0], 4096):
        d = torch.cdist(queries[s : s + 4096], points)
        idx = d.topk(k + int(exclude_self), largest=False).indices
        out.append(idx[:, int(exclude_self) :])
    return torch.cat(out)


def rigidity_loss(xyz: Tensor, neighbors: Tensor) -> Tensor:
    """Local rigidity: mean squared change of the distances between neighbouring points.

    Args:
        xyz: [T,P,3] positions of P points at T times.
        neighbors: [A,K] indices into P of the neighbours of the first A points
            (A <= P; usually every point, A = P).

    Returns:
        scalar: mean over later times, the A points and their neighbours of
        (d(t) - d(t_0))^2, in squared world units; zero for rigid motion. Squared, so
        that it does not resist the first small motions as an L1 penalty would.
    """
    anchors = xyz[:, : neighbors.shape[0], None, :]
    offsets = anchors - xyz[:, neighbors, :]  # [T,A,K,3]
    # the epsilon keeps the gradient finite for coincident points (fresh clones).
    dist = (offsets.square().sum(-1) + 1e-12).sqrt()
    return (dist[1:] - dist[:1]).square().mean()


def rotation_rigidity_loss(xyz: Tensor, rotations: Tensor, neighbors: Tensor) -> Tensor:
    """As-rigid-as-possible in the anchors' frames: the offset from an anchor to each
    neighbour turns with the anchor's rotation (Dynamic 3D Gaussians' rigidity).

    Args:
        xyz: [T,P,3] positions of P points at T times; the first time is the reference.
        rotations: [T,A,3,3] rotations (world from local) of the first A points.
        neighbors: [A,K] indices into P of the neighbours of the first A points.

    Returns:
        scalar: mean over later times, anchors and neighbours of the squared norm of
        (x_j(t) - x_i(t)) - R_i(t) R_i(t_0)^T (x_j(t_0) - x_i(t_0)), squared world units;
        zero for rigid motion with rotations that follow it, whatever the distances.
    """
    offsets = xyz[:, neighbors, :] - xyz[:, : neighbors.shape[0], None, :]  # [T,A,K,3]
    turn = rotations[1:] @ rotations[:1].transpose(-1, -2)  # [T-1,A,3,3]
    expected = torch.einsum("taij,akj->taki", turn, offsets[0])
    return (offsets[1:] - expected).square().sum(-1).mean()


def smoothness_loss(xyz: Tensor) -> Tensor:
    """Temporal smoothness: mean squared norm of the second difference over (uniform) time
    steps.

    Args:
        xyz: [T,...,3] positions at T >= 3 evenly spaced times.

    Returns:
        scalar in squared world units; zero for motion at constant velocity.
    """
    accel = xyz[2:] - 2 * xyz[1:-1] + xyz[:-2]
    return accel.square().sum(-1).mean()
