"""The one place where viser's cameras and splats meet snap3d's.

viser describes a browser camera by

- ``wxyz [4]``: the rotation R_world_camera as a quaternion (w, x, y, z);
- ``position [3]``: the camera centre in world coordinates;
- ``fov``: the *vertical* field of view in radians;
- the canvas size in pixels (its aspect is width / height).

Its camera frame is OpenCV's, as snap3d's is: x right, y down, looking along +z. So
``[R | position]`` is the camtoworld as it stands, and only the intrinsics need building:
a centred pinhole with square pixels, ``fy = (H / 2) / tan(fov / 2)``.

viser draws Gaussians from centres, 3x3 covariances, RGB and opacity; snap3d keeps them
as log scales, quaternions, SH coefficients and opacity logits (``SplatData``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from snap3d.cameras import Cameras, quat_to_rotmat, rotmat_to_quat
from snap3d.io import SH_C0, SplatData


def viser_to_cameras(
    wxyz: np.ndarray,
    position: np.ndarray,
    fov: float,
    width: int,
    height: int,
    time: float | None = None,
) -> Cameras:
    """One snap3d camera (N=1) seeing what a viser camera sees on a ``width x height`` canvas.

    Args:
        wxyz: [4] R_world_camera as a quaternion (w, x, y, z).
        position: [3] camera centre in world coordinates.
        fov: vertical field of view in radians.
        width, height: image size in pixels.
        time: normalised time for dynamic scenes, or None.
    """
    c2w = torch.eye(4, dtype=torch.float32)
    c2w[:3, :3] = quat_to_rotmat(torch.as_tensor(np.asarray(wxyz), dtype=torch.float32))
    c2w[:3, 3] = torch.as_tensor(np.asarray(position), dtype=torch.float32)
    focal = (height / 2) / math.tan(fov / 2)
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    times = None if time is None else torch.tensor([float(time)])
    return Cameras(c2w[None], K[None], width, height, times=times)


def cameras_to_viser(cameras: Cameras, i: int = 0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Camera ``i`` as viser's pose and frustum: (wxyz [4], position [3], fov, aspect).

    ``fov`` is the vertical field of view in radians (from ``fy``); viser has no off-centre
    principal points or distortion, so those are dropped.
    """
    c2w = cameras.camtoworlds[i].detach().cpu().double()
    wxyz = rotmat_to_quat(c2w[:3, :3]).numpy()
    fy = float(cameras.Ks[i, 1, 1])
    fov = 2 * math.atan(cameras.height / (2 * fy))
    return wxyz, c2w[:3, 3].numpy(), fov, cameras.width / cameras.height


def splats_to_viser(splats: SplatData) -> dict[str, np.ndarray]:
    """Keyword arguments of ``viser.SceneApi.add_gaussian_splats`` for these Gaussians.

    Returns:
        centers [N,3], covariances [N,3,3] (R diag(s^2) R^T), rgbs [N,3] (the SH DC colour,
        0.5 + SH_C0 * sh0, clamped to [0,1]) and opacities [N,1] (sigmoid of the logits),
        all float32. View-dependent colour (shN) is dropped: viser draws one colour per
        Gaussian.
    """
    with torch.no_grad():
        R = quat_to_rotmat(splats.quats.float())
        s2 = torch.exp(2 * splats.scales.float())
        cov = (R * s2[:, None, :]) @ R.transpose(-1, -2)
        rgb = (0.5 + SH_C0 * splats.sh0[:, 0].float()).clamp(0, 1)
        opacity = torch.sigmoid(splats.opacities.float())[:, None]
    return {
        "centers": splats.means.detach().float().cpu().numpy(),
        "covariances": cov.cpu().numpy(),
        "rgbs": rgb.cpu().numpy(),
        "opacities": opacity.cpu().numpy(),
    }


def scene_up_direction(cameras: Cameras) -> np.ndarray:
    """[3] the world direction that points up in the training images, on average.

    Image up is the camera's -y axis; averaging it over the training cameras gives the up
    of a capture (a 360 orbit or a forward-facing set) without knowing its world frame.
    Falls back to OpenCV's -y when the cameras disagree completely.
    """
    up = -cameras.camtoworlds[:, :3, 1].double().mean(0)
    norm = float(up.norm())
    if norm < 1e-6:
        return np.array([0.0, -1.0, 0.0])
    return (up / norm).numpy()
