"""EWA projection of 3D Gaussians to screen-space 2D Gaussians (pinhole cameras)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# Opacity below which a Gaussian cannot reach any pixel (alpha < 1/255 everywhere).
ALPHA_THRESHOLD = 1.0 / 255.0
# Bounding box half-extent in standard deviations when no opacity is given.
MAX_EXTENT_SIGMAS = 3.33


class Projection(NamedTuple):
    """Screen-space Gaussians for ``C`` cameras; entries with ``radii == 0`` are culled
    and their other values are not meaningful.

    Attributes:
        radii: pixel half-extents of the screen-space bounding box. [C, N, 2] int32
        means2d: projected centres in pixels. [C, N, 2]
        depths: camera-space z of the centres. [C, N]
        conics: inverse 2D covariance, upper triangle ``(a, b, c)``. [C, N, 3]
        compensations: antialiasing opacity factors, or None. [C, N]
    """

    radii: Tensor
    means2d: Tensor
    depths: Tensor
    conics: Tensor
    compensations: Tensor | None


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from quaternions.

    Args:
        quats: quaternions ``(w, x, y, z)``, not necessarily normalised. [..., 4]

    Returns:
        rotation matrices. [..., 3, 3]
    """
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    opacities: Tensor | None = None,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> Projection:
    """Project 3D Gaussians into pinhole cameras with the EWA splatting approximation.

    The 2D covariance is ``J R Σ Rᵀ Jᵀ + eps2d I``, with ``R`` the camera rotation and ``J``
    the Jacobian of the perspective map, evaluated at the centre clamped to 1.3x the field
    of view so that Gaussians far off-screen do not blow up. When ``opacities`` is given, the bounding box
    shrinks to where ``opacity * exp(-σ)`` can still reach 1/255, and Gaussians too faint
    to reach it anywhere are culled; otherwise the box is 3.33 standard deviations.

    Args:
        means: centres in world space. [N, 3]
        quats: rotations ``(w, x, y, z)``, not necessarily normalised. [N, 4]
        scales: standard deviations along the rotated axes (linear, not log). [N, 3]
        viewmats: world-to-camera transforms, OpenCV axes. [C, 4, 4]
        Ks: pinhole intrinsics (skew ignored). [C, 3, 3]
        width: image width in pixels.
        height: image height in pixels.
        opacities: opacities in [0, 1] for the tighter bounding box, or None. [N]
        eps2d: added to the diagonal of each 2D covariance, in pixels².
        near_plane: Gaussians with depth below this are culled.
        far_plane: Gaussians with depth above this are culled.
        radius_clip: Gaussians whose radii are both at most this (pixels) are culled.
        antialiased: also return ``sqrt(det(Σ2d) / det(Σ2d + eps2d I))``, the factor that
            keeps a Gaussian's integrated opacity when the blur is added.

    Returns:
        the screen-space Gaussians, see :class:`Projection`.
    """
    R = viewmats[:, :3, :3]  # [C, 3, 3]
    means_c = means @ R.transpose(1, 2) + viewmats[:, None, :3, 3]  # [C, N, 3]
    x, y, z = means_c.unbind(-1)  # [C, N]
    depth_ok = (z >= near_plane) & (z <= far_plane)
    # Culled Gaussians must not put inf/nan into the backward pass through 1/z.
    z = torch.where(depth_ok, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    margin_x, margin_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    tx = z * torch.clamp(x / z, -(cx / fx + margin_x), (width - cx) / fx + margin_x)
    ty = z * torch.clamp(y / z, -(cy / fy + margin_y), (height - cy) / fy + margin_y)

    # Σ2d = (J R M)(J R M)ᵀ with M = rotation * scales and the perspective Jacobian
    # J = [[fx/z, 0, -fx tx/z²], [0, fy/z, -fy ty/z²]]; only the two rows of J R are formed,
    # which avoids batches of tiny 3x3 matrix products.
    j00, j02 = fx / z, -fx * tx / (z * z)
    j11, j12 = fy / z, -fy * ty / (z * z)
    R0, R1, R2 = (R[:, None, i, :] for i in range(3))  # [C, 1, 3]
    JR0 = j00[..., None] * R0 + j02[..., None] * R2  # [C, N, 3]
    JR1 = j11[..., None] * R1 + j12[..., None] * R2
    M = quat_to_rotmat(quats) * scales[:, None, :]  # [N, 3, 3]
    JRM0 = (JR0[..., :, None] * M).sum(dim=-2)  # [C, N, 3]
    JRM1 = (JR1[..., :, None] * M).sum(dim=-2)
    cov_xx = (JRM0 * JRM0).sum(-1)
    cov_xy = (JRM0 * JRM1).sum(-1)
    cov_yy = (JRM1 * JRM1).sum(-1)

    det_orig = cov_xx * cov_yy - cov_xy * cov_xy
    cov_xx, cov_yy = cov_xx + eps2d, cov_yy + eps2d
    det = cov_xx * cov_yy - cov_xy * cov_xy
    det_ok = det > 0
    det = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([cov_yy / det, -cov_xy / det, cov_xx / det], dim=-1)
    compensations = None
    if antialiased:
        # The floor keeps sqrt's derivative finite for degenerate (flat) Gaussians.
        floor = torch.finfo(det.dtype).tiny
        compensations = torch.sqrt(torch.clamp(det_orig / det, min=floor))
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    with torch.no_grad():
        valid = depth_ok & det_ok
        extent = torch.full_like(det, MAX_EXTENT_SIGMAS)
        if opacities is not None:
            visible_opacity = opacities.detach().expand_as(det)
            if compensations is not None:
                visible_opacity = visible_opacity * compensations
            valid &= visible_opacity >= ALPHA_THRESHOLD
            reach = torch.sqrt(2.0 * torch.log(visible_opacity.clamp_min(ALPHA_THRESHOLD) * 255.0))
            extent = torch.minimum(extent, reach)
        radius = torch.ceil(extent[..., None] * torch.stack([cov_xx, cov_yy], -1).sqrt())
        valid &= (radius > radius_clip).any(dim=-1)
        mx, my = means2d.detach().unbind(-1)
        rx, ry = radius.unbind(-1)
        valid &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.where(valid[..., None], radius, 0).to(torch.int32)
    return Projection(radii, means2d, means_c[..., 2], conics, compensations)
