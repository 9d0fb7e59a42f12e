"""Cameras: one batched type for every representation.

Conventions, used everywhere in snap3d:

- ``camtoworlds [N,4,4]`` map camera coordinates to world coordinates in the OpenCV
  convention: x right, y down, z forward (the camera looks along +z).
- ``Ks [N,3,3]`` are pinhole intrinsics in pixels; the centre of pixel (i, j) (row i,
  column j) is at ``(x, y) = (j + 0.5, i + 0.5)``.
- ``distortion [N,4]``: OPENCV is ``(k1, k2, p1, p2)``, OPENCV_FISHEYE is ``(k1..k4)``
  (the models and parameter orders of COLMAP and nerfstudio).
- ``times [N]`` are normalised to [0, 1] for dynamic scenes.

Converters to and from OpenGL (nerfstudio, Blender: x right, y up, looking down -z)
and COLMAP (world-to-camera rotation as a quaternion ``qvec = (w,x,y,z)`` plus ``tvec``)
live beside the type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from snap3d.errors import Snap3dError

CAMERA_MODELS = ("PINHOLE", "OPENCV", "OPENCV_FISHEYE")
NUM_DISTORTION_PARAMS = {"PINHOLE": 0, "OPENCV": 4, "OPENCV_FISHEYE": 4}

_GL_FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class Cameras:
    """A batch of N cameras sharing one image size and camera model.

    Attributes:
        camtoworlds: [N,4,4] camera-to-world, OpenCV convention.
        Ks: [N,3,3] intrinsics in pixels.
        width, height: image size in pixels.
        camera_model: one of ``CAMERA_MODELS``.
        distortion: [N,4] distortion parameters, or None for PINHOLE.
        times: [N] normalised times, or None for static scenes.
    """

    camtoworlds: Tensor
    Ks: Tensor
    width: int
    height: int
    camera_model: str = "PINHOLE"
    distortion: Tensor | None = None
    times: Tensor | None = None

    def __post_init__(self) -> None:
        if self.camtoworlds.ndim == 2:
            self.camtoworlds = self.camtoworlds[None]
        if self.Ks.ndim == 2:
            self.Ks = self.Ks[None]
        n = self.camtoworlds.shape[0]
        if self.camtoworlds.shape[1:] != (4, 4) or self.Ks.shape != (n, 3, 3):
            raise Snap3dError(
                f"cameras need camtoworlds [N,4,4] and Ks [N,3,3], got "
                f"{tuple(self.camtoworlds.shape)} and {tuple(self.Ks.shape)}"
            )
        if self.camera_model not in CAMERA_MODELS:
            raise Snap3dError(
                f"unknown camera model {self.camera_model!r}; supported: {', '.join(CAMERA_MODELS)}"
            )
        if self.distortion is not None:
            if self.distortion.ndim == 1:
                self.distortion = self.distortion[None].expand(n, -1).contiguous()
            if self.distortion.shape != (n, NUM_DISTORTION_PARAMS[self.camera_model]):
                raise Snap3dError(
                    f"{self.camera_model} cameras take distortion "
                    f"[N,{NUM_DISTORTION_PARAMS[self.camera_model]}], "
                    f"got {tuple(self.distortion.shape)}"
                )
            if not bool(self.distortion.any()):
                self.distortion = None
        if self.times is not None and self.times.shape != (n,):
            raise Snap3dError(f"times must be [N]={n}, got {tuple(self.times.shape)}")
        self.width, self.height = int(self.width), int(self.height)

    # -- batch handling ---------------------------------------------------------------

    def __len__(self) -> int:
        return self.camtoworlds.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Cameras:
        """Select cameras; an int keeps the batch dimension (returns N=1)."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return replace(
            self,
            camtoworlds=self.camtoworlds[index],
            Ks=self.Ks[index],
            distortion=None if self.distortion is None else self.distortion[index],
            times=None if self.times is None else self.times[index],
        )

    @staticmethod
    def cat(cameras: Sequence[Cameras]) -> Cameras:
        """Concatenate batches with the same size and model."""
        first = cameras[0]
        for c in cameras[1:]:
            if (c.width, c.height, c.camera_model) != (
                first.width,
                first.height,
                first.camera_model,
            ):
                raise Snap3dError("can only concatenate cameras of one size and model")
        has_dist = any(c.distortion is not None for c in cameras)
        has_times = all(c.times is not None for c in cameras)
        return replace(
            first,
            camtoworlds=torch.cat([c.camtoworlds for c in cameras]),
            Ks=torch.cat([c.Ks for c in cameras]),
            distortion=torch.cat([c.distortion_or_zeros() for c in cameras]) if has_dist else None,
            times=torch.cat([c.times for c in cameras]) if has_times else None,
        )

    def to(self, device: torch.device | str) -> Cameras:
        return replace(
            self,
            camtoworlds=self.camtoworlds.to(device),
            Ks=self.Ks.to(device),
            distortion=None if self.distortion is None else self.distortion.to(device),
            times=None if self.times is None else self.times.to(device),
        )

    @property
    def device(self) -> torch.device:
        return self.camtoworlds.device

    def distortion_or_zeros(self) -> Tensor:
        """[N,4] (or [N,0] for PINHOLE) distortion parameters, zeros when absent."""
        if self.distortion is not None:
            return self.distortion
        k = NUM_DISTORTION_PARAMS[self.camera_model]
        return self.camtoworlds.new_zeros(len(self), k)

    def rescaled(self, factor: float) -> Cameras:
        """Cameras for images resized by ``factor`` (0.5 halves width and height).

        The size is rounded to whole pixels and the intrinsics follow the actual size
        ratio so that the image plane keeps covering the same field of view.
        """
        return self.resized(max(1, round(self.width * factor)), max(1, round(self.height * factor)))

    def resized(self, width: int, height: int) -> Cameras:
        """Cameras for images resized to exactly ``width x height`` pixels (each axis
        scaled by its own ratio), as when a scene ships pre-shrunk image folders."""
        sx, sy = width / self.width, height / self.height
        Ks = self.Ks.clone()
        Ks[:, 0, :] *= sx
        Ks[:, 1, :] *= sy
        return replace(self, Ks=Ks, width=width, height=height)

    def to_dict(self) -> dict:
        """JSON-ready description (OpenCV camtoworlds), inverse of ``from_dict``."""
        return {
            "convention": "opencv camera-to-world (x right, y down, z forward)",
            "camera_model": self.camera_model,
            "width": self.width,
            "height": self.height,
            "camtoworlds": self.camtoworlds.tolist(),
            "Ks": self.Ks.tolist(),
            "distortion": None if self.distortion is None else self.distortion.tolist(),
            "times": None if self.times is None else self.times.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Cameras:
        def tensor(key: str) -> Tensor | None:
            return None if d.get(key) is None else torch.tensor(d[key], dtype=torch.float32)

        try:
            return cls(
                camtoworlds=tensor("camtoworlds"),
                Ks=tensor("Ks"),
                width=d["width"],
                height=d["height"],
                camera_model=d.get("camera_model", "PINHOLE"),
                distortion=tensor("distortion"),
                times=tensor("times"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise Snap3dError(f"malformed cameras description: {e}") from e

    # -- geometry ---------------------------------------------------------------------

    @property
    def viewmats(self) -> Tensor:
        """[N,4,4] world-to-camera matrices (OpenCV), the rigid inverse of camtoworlds."""
        return rigid_inverse(self.camtoworlds)

    @property
    def centers(self) -> Tensor:
        """[N,3] camera centres in world coordinates."""
        return self.camtoworlds[:, :3, 3]

    @property
    def forward(self) -> Tensor:
        """[N,3] unit viewing directions (the camera +z axis) in world coordinates."""
        return self.camtoworlds[:, :3, 2]

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points into every camera, applying lens distortion.

        Args:
            points: [..., 3] world coordinates.

        Returns:
            pixels [N, ..., 2] (x, y) image coordinates and depths [N, ..., 1], the camera
            z coordinate (points behind a camera have depth <= 0; their pixels are
            meaningless).
        """
        lead = points.shape[:-1]
        flat = points.reshape(-1, 3)
        view = self.viewmats
        cam = torch.einsum("nij,pj->npi", view[:, :3, :3], flat) + view[:, None, :3, 3]
        z = cam[..., 2:3]
        xy = cam[..., :2] / z.clamp_min(1e-10)
        xy = distort(xy, self.distortion_or_zeros()[:, None], self.camera_model)
        pix = torch.einsum("nij,npj->npi", self.Ks[:, :2, :2], xy) + self.Ks[:, None, :2, 2]
        n = len(self)
        return pix.reshape(n, *lead, 2), z.reshape(n, *lead, 1)

    def pixel_grid(self) -> Tensor:
        """[H,W,2] (x, y) coordinates of pixel centres."""
        ys, xs = torch.meshgrid(
            torch.arange(self.height, device=self.device, dtype=self.Ks.dtype) + 0.5,
            torch.arange(self.width, device=self.device, dtype=self.Ks.dtype) + 0.5,
            indexing="ij",
        )
        return torch.stack([xs, ys], dim=-1)

    def rays(self, i: int) -> tuple[Tensor, Tensor]:
        """Rays through the pixel centres of camera ``i``.

        Returns:
            origins [H,W,3] and unit directions [H,W,3] in world coordinates, undistorted
            for OPENCV and OPENCV_FISHEYE cameras.
        """
        grid = self.pixel_grid().reshape(-1, 2)
        idx = torch.full((grid.shape[0],), int(i), dtype=torch.long, device=self.device)
        o, d = self.rays_at(idx, grid)
        return o.reshape(self.height, self.width, 3), d.reshape(self.height, self.width, 3)

    def rays_at(self, camera_indices: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """Rays for arbitrary (camera, pixel) pairs, as ray-batch training needs.

        Args:
            camera_indices: [M] long camera indices.
            pixels: [M,2] (x, y) image coordinates (pixel centres are at +0.5).

        Returns:
            origins [M,3] and unit directions [M,3] in world coordinates.
        """
        K = self.Ks[camera_indices]
        xy = (pixels - K[:, :2, 2]) / torch.stack([K[:, 0, 0], K[:, 1, 1]], dim=-1)
        # A skew term is rare but part of K: remove it before undistorting.
        xy[:, 0] = xy[:, 0] - K[:, 0, 1] / K[:, 0, 0] * xy[:, 1]
        xy = undistort(xy, self.distortion_or_zeros()[camera_indices], self.camera_model)
        dirs_cam = torch.cat([xy, torch.ones_like(xy[:, :1])], dim=-1)
        c2w = self.camtoworlds[camera_indices]
        dirs = torch.einsum("mij,mj->mi", c2w[:, :3, :3], dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        return c2w[:, :3, 3].expand_as(dirs).clone(), dirs


# -- lens models ------------------------------------------------------------------------


def distort(xy: Tensor, params: Tensor, camera_model: str) -> Tensor:
    """Apply lens distortion to normalised image coordinates.

    Args:
        xy: [..., 2] undistorted normalised coordinates (x/z, y/z).
        params: [..., K] distortion parameters broadcastable to xy's batch shape.
        camera_model: PINHOLE, OPENCV (k1,k2,p1,p2) or OPENCV_FISHEYE (k1..k4).

    Returns:
        [..., 2] distorted normalised coordinates.
    """
    if camera_model == "PINHOLE" or params.shape[-1] == 0:
        return xy
    x, y = xy[..., 0], xy[..., 1]
    if camera_model == "OPENCV":
        k1, k2, p1, p2 = params.unbind(-1)
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return torch.stack([xd, yd], dim=-1)
    if camera_model == "OPENCV_FISHEYE":
        k1, k2, k3, k4 = params.unbind(-1)
        r = torch.sqrt(x * x + y * y)
        theta = torch.atan(r)
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
        scale = torch.where(r > 1e-8, theta_d / r.clamp_min(1e-8), torch.ones_like(r))
        return xy * scale[..., None]
    raise Snap3dError(f"unknown camera model {camera_model!r}")


def undistort(xy: Tensor, params: Tensor, camera_model: str, iterations: int = 20) -> Tensor:
    """Invert ``distort`` by Newton's method on the 2D residual.

    Args:
        xy: [M,2] distorted normalised coordinates.
        params: [M,K] distortion parameters.

    Returns:
        [M,2] undistorted normalised coordinates.
    """
    if camera_model == "PINHOLE" or params.shape[-1] == 0:
        return xy
    if camera_model == "OPENCV_FISHEYE":  # not the identity even without coefficients
        return _undistort_fisheye(xy, params, iterations)
    if not bool(params.any()):
        return xy
    und = xy.clone()
    for _ in range(iterations):
        with torch.enable_grad():
            p = und.detach().requires_grad_(True)
            d = distort(p, params, camera_model)
            res = d - xy
            jx = torch.autograd.grad(d[:, 0].sum(), p, retain_graph=True)[0]
            jy = torch.autograd.grad(d[:, 1].sum(), p)[0]
        a, b, c, e = jx[:, 0], jx[:, 1], jy[:, 0], jy[:, 1]
        det = a * e - b * c
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        step_x = (e * res[:, 0] - b * res[:, 1]) / det
        step_y = (-c * res[:, 0] + a * res[:, 1]) / det
        und = und.detach() - torch.stack([step_x, step_y], dim=-1).detach()
    return und


def _undistort_fisheye(xy: Tensor, params: Tensor, iterations: int) -> Tensor:
    """Solve theta_d = theta (1 + k1 t^2 + ... ) for theta with Newton's method."""
    k1, k2, k3, k4 = params.unbind(-1)
    theta_d = xy.norm(dim=-1)
    theta = theta_d.clone()
    for _ in range(iterations):
        t2 = theta * theta
        f = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
        df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
        theta = theta - f / df
    r = torch.tan(theta.clamp(max=torch.pi / 2 - 1e-4))
    scale = torch.where(theta_d > 1e-8, r / theta_d.clamp_min(1e-8), torch.ones_like(r))
    return xy * scale[:, None]


# -- conversions ------------------------------------------------------------------------


def rigid_inverse(transforms: Tensor) -> Tensor:
    """Invert rigid [...,4,4] transforms (rotation + translation) exactly."""
    R = transforms[..., :3, :3]
    t = transforms[..., :3, 3:]
    inv = torch.zeros_like(transforms)
    inv[..., :3, :3] = R.transpose(-1, -2)
    inv[..., :3, 3:] = -R.transpose(-1, -2) @ t
    inv[..., 3, 3] = 1
    return inv


def opengl_to_opencv(camtoworlds: Tensor) -> Tensor:
    """Camera-to-world [...,4,4] from OpenGL/Blender/nerfstudio axes (y up, -z forward) to
    OpenCV axes (y down, +z forward). The same flip converts back: it is an involution."""
    return camtoworlds @ _GL_FLIP.to(camtoworlds)


opencv_to_opengl = opengl_to_opencv


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[...,4] quaternions (w,x,y,z), normalised here, to [...,3,3] rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)  # fmt: skip


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """[...,4] Hamilton product a * b of (w, x, y, z) quaternions (rotate by b, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def blend_quats(q: Tensor, weights: Tensor, ref: Tensor) -> Tensor:
    """Weighted blend of unit quaternions ``q`` [...,n,4] by ``weights`` [...,n], each
    first flipped into the hemisphere of ``ref`` [...,1,4] (so that q and -q do not
    cancel), normalised: [...,4]."""
    q = q * torch.sign((q * ref).sum(-1, keepdim=True) + 1e-12)
    blend = (weights[..., None] * q).sum(-2)
    return blend / blend.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def rotmat_to_quat(R: Tensor) -> Tensor:
    """[...,3,3] rotation matrices to [...,4] unit quaternions (w,x,y,z) with w >= 0."""
    m = R.reshape(-1, 3, 3)
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # Four candidate formulas; pick, per matrix, the one with the largest denominator.
    cand = torch.stack(
        [
            torch.stack([1 + trace, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
            torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
            torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], -1),
            torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
        ],
        dim=1,
    )  # fmt: skip
    diag = torch.stack([trace, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1)
    best = diag.argmax(-1)
    q = cand[torch.arange(m.shape[0]), best]
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*R.shape[:-2], 4)


def colmap_to_camtoworlds(qvecs: Tensor, tvecs: Tensor) -> Tensor:
    """COLMAP world-to-camera poses (qvec [N,4] w,x,y,z; tvec [N,3]) to camtoworlds [N,4,4].

    COLMAP cameras already use the OpenCV axes, so only the inverse is needed.
    """
    w2c = torch.eye(4, dtype=qvecs.dtype, device=qvecs.device).repeat(qvecs.shape[0], 1, 1)
    w2c[:, :3, :3] = quat_to_rotmat(qvecs)
    w2c[:, :3, 3] = tvecs
    return rigid_inverse(w2c)


def camtoworlds_to_colmap(camtoworlds: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of ``colmap_to_camtoworlds``: returns (qvecs [N,4], tvecs [N,3])."""
    w2c = rigid_inverse(camtoworlds)
    return rotmat_to_quat(w2c[:, :3, :3]), w2c[:, :3, 3]


def look_at(
    eyes: Tensor, targets: Tensor, up: Tensor | Sequence[float] = (0.0, 0.0, 1.0)
) -> Tensor:
    """OpenCV camtoworlds [N,4,4] for cameras at ``eyes [N,3]`` looking at ``targets [N,3]``.

    ``up`` is the world direction that appears upward in the image (image y points away
    from it).
    """
    up = torch.as_tensor(up, dtype=eyes.dtype, device=eyes.device).expand_as(eyes)
    z = targets - eyes
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(z, up)
    bad = x.norm(dim=-1) < 1e-6
    if bool(bad.any()):  # looking along `up`: any perpendicular will do
        alt = torch.tensor([1.0, 0.0, 0.0], dtype=eyes.dtype, device=eyes.device).expand_as(eyes)
        x = torch.where(bad[:, None], torch.linalg.cross(z, alt), x)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=eyes.dtype, device=eyes.device).repeat(eyes.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = x, y, z, eyes
    return c2w


def intrinsics_matrix(fx, fy, cx, cy, n: int = 1, dtype=torch.float32) -> Tensor:
    """[n,3,3] pinhole intrinsics from focal lengths and principal point in pixels."""
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.repeat(n, 1, 1)
