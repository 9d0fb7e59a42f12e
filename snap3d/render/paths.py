"""Camera paths for rendering videos: orbits around a capture, and path files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from snap3d.cameras import Cameras, look_at, opengl_to_opencv
from snap3d.errors import Snap3dError


def focus_point(cameras: Cameras) -> Tensor:
    """[3] the point nearest (least squares) to all optical axes: what the capture looks at."""
    o = cameras.centers.double()
    d = cameras.forward.double()
    eye = torch.eye(3, dtype=torch.float64)
    proj = eye - d[:, :, None] * d[:, None, :]  # projects onto each axis' normal plane
    A = proj.sum(0)
    b = (proj @ o[:, :, None]).sum(0)[:, 0]
    if torch.linalg.matrix_rank(A) < 3:  # all axes parallel: look one mean distance ahead
        return (o.mean(0) + d.mean(0)).float()
    return torch.linalg.solve(A, b).float()


def world_up(cameras: Cameras) -> Tensor:
    """[3] unit vector pointing up in the capture.

    The mean image "up" (-y in OpenCV) of the cameras, refined to the normal of the
    plane through the camera centres when they lie near one (an orbit around an object),
    since a single tilted camera or an off-centre ring biases the mean.
    """
    up = -cameras.camtoworlds[:, :3, 1].mean(0)
    up = up / up.norm().clamp_min(1e-8)
    centers = cameras.centers - cameras.centers.mean(0)
    if len(cameras) >= 3:
        _, sv, vh = torch.linalg.svd(centers.double(), full_matrices=False)
        normal = vh[-1].float()
        if sv[-1] < 0.3 * sv[-2] and abs(float(normal @ up)) > 0.7:
            up = normal if float(normal @ up) > 0 else -normal
    return up


def orbit_path(cameras: Cameras, num_frames: int) -> Cameras:
    """A smooth path of ``num_frames`` cameras through the space of ``cameras``.

    Captures whose viewing directions spread widely (360 degrees around an object) get
    a circle around the focus point at the mean distance and height; forward-facing
    captures get an ellipse in the plane of the cameras, always looking at the focus
    point (the LLFF "spiral").
    """
    if num_frames < 1:
        raise Snap3dError("an orbit needs at least one frame")
    target = focus_point(cameras)
    up = world_up(cameras)
    centers = cameras.centers
    spread = (cameras.forward @ cameras.forward.mean(0)).min()
    t = torch.arange(num_frames, dtype=torch.float32) / num_frames * 2 * math.pi
    if spread < math.cos(math.radians(60)):
        rel = centers - target
        height = float((rel @ up).mean())
        radius = float((rel - (rel @ up)[:, None] * up).norm(dim=-1).mean())
        a = rel[0] - (rel[0] @ up) * up
        a = a / a.norm().clamp_min(1e-8)
        b = torch.linalg.cross(up, a)
        eyes = (
            target + height * up + radius * (torch.cos(t)[:, None] * a + torch.sin(t)[:, None] * b)
        )
    else:
        mean = centers.mean(0)
        rel = centers - mean
        right = cameras.camtoworlds[:, :3, 0].mean(0)
        right = right / right.norm()
        down = torch.linalg.cross(cameras.forward.mean(0), right)
        rx = float((rel @ right).abs().quantile(0.9)) or 0.1
        ry = float((rel @ down).abs().quantile(0.9)) or 0.1
        eyes = mean + rx * torch.cos(t)[:, None] * right + ry * torch.sin(t)[:, None] * down
    c2w = look_at(eyes, target.expand_as(eyes), up=up)
    return Cameras(c2w, cameras.Ks[:1].repeat(num_frames, 1, 1), cameras.width, cameras.height)


def load_camera_path(path: Path, default: Cameras | None = None) -> Cameras:
    """Read a camera path file.

    Two forms are accepted: nerfstudio's ``camera_path.json`` (``camera_path`` entries
    with ``camera_to_world`` (OpenGL, 16 numbers), ``fov`` in degrees (vertical), and
    ``render_width``/``render_height``) and snap3d's own (``Cameras.to_dict`` output).
    """
    path = Path(path)
    if not path.is_file():
        raise Snap3dError("camera path file is missing", path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Snap3dError(f"malformed JSON at line {e.lineno}: {e.msg}", path) from e
    if "camtoworlds" in data:
        try:
            return Cameras.from_dict(data)
        except Snap3dError as e:
            raise Snap3dError(e.problem, path) from e
    if "camera_path" not in data:
        raise Snap3dError("neither a nerfstudio camera_path.json nor snap3d cameras", path)
    try:
        width = int(data.get("render_width") or (default.width if default else 0))
        height = int(data.get("render_height") or (default.height if default else 0))
        frames = data["camera_path"]
        c2w = torch.tensor([f["camera_to_world"] for f in frames], dtype=torch.float32)
        fov = torch.tensor([float(f.get("fov", 50.0)) for f in frames])
    except (KeyError, TypeError, ValueError) as e:
        raise Snap3dError(f"malformed camera path: {e}", path) from e
    if width <= 0 or height <= 0:
        raise Snap3dError("camera path has no render_width/render_height", path)
    focal = 0.5 * height / torch.tan(torch.deg2rad(fov) / 2)
    Ks = torch.zeros(len(frames), 3, 3)
    Ks[:, 0, 0], Ks[:, 1, 1] = focal, focal
    Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = width / 2, height / 2, 1
    return Cameras(opengl_to_opencv(c2w.reshape(-1, 4, 4)), Ks, width, height)
