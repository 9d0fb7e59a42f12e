"""Cameras: conversions both ways, rays, projection and lens models against analytic cases."""

from __future__ import annotations

import math

import pytest
import torch

from snap3d.cameras import (
    Cameras,
    blend_quats,
    camtoworlds_to_colmap,
    colmap_to_camtoworlds,
    distort,
    intrinsics_matrix,
    look_at,
    opencv_to_opengl,
    opengl_to_opencv,
    quat_to_rotmat,
    rigid_inverse,
    rotmat_to_quat,
)
from snap3d.errors import Snap3dError


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons: every tensor of these tests is float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def gl_camera_on_z(distance: float = 5.0) -> torch.Tensor:
    """OpenGL camtoworld of a camera at (0,0,distance) looking at the origin, y up."""
    c2w = torch.eye(4)
    c2w[2, 3] = distance
    return c2w


def random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return quat_to_rotmat(torch.randn(n, 4, generator=g))


def random_camtoworlds(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, :3] = random_rotations(n, seed)
    c2w[:, :3, 3] = torch.randn(n, 3, generator=g) * 3
    return c2w


def camera(model: str = "PINHOLE", distortion=None, width: int = 40, height: int = 30, c2w=None):
    c2w = gl_to_cv_on_z() if c2w is None else c2w
    K = intrinsics_matrix(35.0, 33.0, 20.5, 14.0, len(c2w), dtype=torch.float64)
    d = None if distortion is None else torch.tensor(distortion, dtype=torch.float64)
    return Cameras(c2w, K, width, height, model, d)


def gl_to_cv_on_z() -> torch.Tensor:
    return opengl_to_opencv(gl_camera_on_z())[None]


# -- OpenGL <-> OpenCV -------------------------------------------------------------------


def test_opengl_camera_on_z_axis_looks_down_minus_z_in_opencv():
    cv = opengl_to_opencv(gl_camera_on_z())
    torch.testing.assert_close(cv[:3, 2], torch.tensor([0.0, 0.0, -1.0]))  # forward
    torch.testing.assert_close(cv[:3, 0], torch.tensor([1.0, 0.0, 0.0]))  # right
    torch.testing.assert_close(cv[:3, 1], torch.tensor([0.0, -1.0, 0.0]))  # down = -up
    torch.testing.assert_close(cv[:3, 3], torch.tensor([0.0, 0.0, 5.0]))  # centre kept
    cams = Cameras(cv[None], intrinsics_matrix(10, 10, 5, 5, dtype=torch.float64), 10, 10)
    torch.testing.assert_close(cams.forward[0], torch.tensor([0.0, 0.0, -1.0]))
    # The origin is 5 in front of it.
    _, depth = cams.project(torch.zeros(1, 3))
    torch.testing.assert_close(depth[0, 0], torch.tensor([5.0]))


def test_opengl_opencv_round_trip():
    c2w = random_camtoworlds(6)
    torch.testing.assert_close(opencv_to_opengl(opengl_to_opencv(c2w)), c2w)
    # Only the camera axes change: the centre stays and y, z flip.
    cv = opengl_to_opencv(c2w)
    torch.testing.assert_close(cv[:, :3, 3], c2w[:, :3, 3])
    torch.testing.assert_close(cv[:, :3, 1], -c2w[:, :3, 1])
    torch.testing.assert_close(cv[:, :3, 2], -c2w[:, :3, 2])


# -- COLMAP qvec/tvec <-> camtoworlds ----------------------------------------------------


def test_quat_to_rotmat_known_rotation():
    # 90 degrees about z maps x to y.
    q = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)])
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(quat_to_rotmat(q), expected)
    torch.testing.assert_close(quat_to_rotmat(3 * q), expected)  # normalised first


def test_colmap_camera_on_z_axis():
    # World-to-camera of the camera at (0,0,5) looking at the origin: a half turn about x
    # (qvec (0,1,0,0)) and t = -R c = (0,0,5).
    qvec, tvec = torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 5.0]])
    c2w = colmap_to_camtoworlds(qvec, tvec)
    torch.testing.assert_close(c2w[0], opengl_to_opencv(gl_camera_on_z()))
    q, t = camtoworlds_to_colmap(c2w)
    assert torch.allclose(q, qvec) or torch.allclose(q, -qvec)  # w = 0: either sign
    torch.testing.assert_close(t, tvec)


def test_colmap_round_trip_both_ways():
    c2w = random_camtoworlds(8, seed=3)
    q, t = camtoworlds_to_colmap(c2w)
    assert bool((q[:, 0] >= 0).all())
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(colmap_to_camtoworlds(q, t), c2w)
    # And qvec/tvec -> camtoworlds -> qvec/tvec.
    q2, t2 = camtoworlds_to_colmap(colmap_to_camtoworlds(q, t))
    torch.testing.assert_close(q2, q)
    torch.testing.assert_close(t2, t)
    # The camera centre is -R^T t.
    R = quat_to_rotmat(q)
    torch.testing.assert_close(c2w[:, :3, 3], -(R.transpose(1, 2) @ t[:, :, None])[:, :, 0])


def test_rotmat_to_quat_handles_every_branch():
    # Half turns about each axis exercise the non-trace branches.
    angles = [0.0, math.pi, math.pi, math.pi, 2.5]
    axes = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 2, 3]])
    axes = axes / axes.norm(dim=-1, keepdim=True)
    q = torch.cat(
        [
            torch.cos(torch.tensor(angles) / 2)[:, None],
            torch.sin(torch.tensor(angles) / 2)[:, None] * axes,
        ],
        -1,
    )
    R = quat_to_rotmat(q)
    torch.testing.assert_close(quat_to_rotmat(rotmat_to_quat(R)), R)


def test_rigid_inverse():
    c2w = random_camtoworlds(4)
    torch.testing.assert_close(rigid_inverse(c2w) @ c2w, torch.eye(4).expand(4, 4, 4))


# -- rays and projection ------------------------------------------------------------------


def test_centre_ray_is_forward_axis_and_edges_at_half_fov():
    # Odd size with a centred principal point: the middle pixel's centre is on the axis.
    w, h, f = 7, 5, 4.0
    c2w = look_at(torch.tensor([[2.0, -3.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.0]]))
    cams = Cameras(c2w, intrinsics_matrix(f, f, w / 2, h / 2, dtype=torch.float64), w, h)
    origins, dirs = cams.rays(0)
    torch.testing.assert_close(dirs[h // 2, w // 2], cams.forward[0])
    torch.testing.assert_close(origins, cams.centers[0].expand(h, w, 3))
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(h, w))
    # Rays through the image edges and corners, at the angles the field of view gives.
    pixels = torch.tensor([[0.0, h / 2], [w, h / 2], [w / 2, 0.0], [0.0, 0.0]])
    _, d = cams.rays_at(torch.zeros(4, dtype=torch.long), pixels)
    angles = torch.acos((d @ cams.forward[0]).clamp(-1, 1))
    half_x, half_y = math.atan(w / 2 / f), math.atan(h / 2 / f)
    corner = math.atan(math.hypot(w / 2, h / 2) / f)
    torch.testing.assert_close(angles, torch.tensor([half_x, half_x, half_y, corner]))
    # The left edge ray leans towards -x (camera right is +x), the top one towards -y.
    right, down = cams.camtoworlds[0, :3, 0], cams.camtoworlds[0, :3, 1]
    assert float(d[0] @ right) < 0 < float(d[1] @ right)
    assert float(d[2] @ down) < 0


def test_points_on_rays_project_back_to_their_pixels():
    cams = camera(c2w=random_camtoworlds(2, seed=5))
    for i in range(2):
        origins, dirs = cams.rays(i)
        t = torch.linspace(0.5, 4.0, cams.height * cams.width).reshape(cams.height, cams.width, 1)
        pix, depth = cams[i].project(origins + t * dirs)
        torch.testing.assert_close(pix[0], cams.pixel_grid())
        torch.testing.assert_close(depth[0], t * (dirs @ cams.forward[i])[..., None])


@pytest.mark.parametrize(
    "model, params",
    [
        ("OPENCV", [0.1, -0.05, 0.01, -0.02]),
        ("OPENCV", [-0.25, 0.05, 0.0, 0.0]),
        ("OPENCV_FISHEYE", [0.1, 0.02, -0.01, 0.005]),
        ("OPENCV_FISHEYE", [0.0, 0.0, 0.0, 0.0]),
    ],
)
def test_distorted_rays_round_trip_to_the_pixel_grid(model, params):
    cams = camera(model, [params, params], c2w=random_camtoworlds(2, seed=7))
    for i in range(2):
        origins, dirs = cams.rays(i)
        pix, _ = cams[i].project(origins + 2.0 * dirs)
        assert float((pix[0] - cams.pixel_grid()).abs().max()) < 1e-3


def test_distortion_moves_rays():
    pinhole = camera()
    distorted = camera("OPENCV", [0.2, 0.0, 0.0, 0.0])
    _, d0 = pinhole.rays(0)
    _, d1 = distorted.rays(0)
    # Barrel distortion (k1 > 0 pushes points outwards) means a corner pixel sees a ray
    # closer to the axis than the pinhole's; the principal point's ray is unchanged.
    axis = pinhole.forward[0]
    assert float(d1[0, 0] @ axis) > float(d0[0, 0] @ axis)


def test_opencv_distortion_by_hand():
    k1, k2, p1, p2 = 0.1, 0.01, 0.001, 0.002
    x, y = 0.2, 0.1
    r2 = x * x + y * y  # 0.05
    radial = 1 + k1 * r2 + k2 * r2 * r2  # 1.005025
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)  # 0.201305
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y  # 0.1006525
    assert (xd, yd) == pytest.approx((0.201305, 0.1006525))
    out = distort(torch.tensor([[x, y]]), torch.tensor([[k1, k2, p1, p2]]), "OPENCV")
    torch.testing.assert_close(out, torch.tensor([[0.201305, 0.1006525]]))


def test_fisheye_distortion_by_hand():
    # At x/z = 1 the angle is 45 degrees; theta_d = theta (1 + k1 theta^2).
    theta = math.pi / 4
    expected = theta * (1 + 0.1 * theta**2)
    out = distort(
        torch.tensor([[1.0, 0.0]]), torch.tensor([[0.1, 0.0, 0.0, 0.0]]), "OPENCV_FISHEYE"
    )
    torch.testing.assert_close(out, torch.tensor([[expected, 0.0]]))
    # Equidistant without coefficients: the image radius is the angle itself.
    out = distort(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 4), "OPENCV_FISHEYE")
    torch.testing.assert_close(out, torch.tensor([[0.0, theta]]))


def test_pinhole_distort_is_identity():
    xy = torch.randn(5, 2)
    torch.testing.assert_close(distort(xy, torch.zeros(5, 0), "PINHOLE"), xy)


# -- batch handling and resizing ------------------------------------------------------------


def test_rescaled_halves_focal_and_principal_point():
    cams = camera()
    half = cams.rescaled(0.5)
    assert (half.width, half.height) == (20, 15)
    torch.testing.assert_close(half.Ks[0, :2, :], cams.Ks[0, :2, :] / 2)
    torch.testing.assert_close(half.Ks[0, 2], cams.Ks[0, 2])
    # Rays through corresponding points stay the same.
    _, d_full = cams.rays_at(torch.zeros(1, dtype=torch.long), torch.tensor([[10.0, 6.0]]))
    _, d_half = half.rays_at(torch.zeros(1, dtype=torch.long), torch.tensor([[5.0, 3.0]]))
    torch.testing.assert_close(d_full, d_half)
    torch.testing.assert_close(cams.rescaled(2.0).Ks[0, 0, 0], 2 * cams.Ks[0, 0, 0])


def test_resized_follows_each_axis():
    cams = camera()  # 40 x 30
    small = cams.resized(13, 10)
    assert (small.width, small.height) == (13, 10)
    torch.testing.assert_close(small.Ks[0, 0], cams.Ks[0, 0] * 13 / 40)
    torch.testing.assert_close(small.Ks[0, 1], cams.Ks[0, 1] * 10 / 30)


def timed_cameras(n: int = 5) -> Cameras:
    K = intrinsics_matrix(10, 10, 5, 5, n, dtype=torch.float64)
    K[:, 0, 0] += torch.arange(n)
    return Cameras(
        random_camtoworlds(n),
        K,
        10,
        10,
        "OPENCV",
        torch.arange(4.0 * n).reshape(n, 4) / 100,
        times=torch.linspace(0, 1, n),
    )


def test_indexing_keeps_everything_aligned():
    cams = timed_cameras()
    one = cams[2]
    assert len(one) == 1 and one.camtoworlds.shape == (1, 4, 4)
    torch.testing.assert_close(one.Ks[0], cams.Ks[2])
    torch.testing.assert_close(one.distortion[0], cams.distortion[2])
    torch.testing.assert_close(one.times, cams.times[2:3])
    last = cams[-1]
    torch.testing.assert_close(last.camtoworlds[0], cams.camtoworlds[4])
    some = cams[[0, 3]]
    torch.testing.assert_close(some.times, cams.times[[0, 3]])
    mask = cams[torch.tensor([True, False, True, False, False])]
    torch.testing.assert_close(mask.Ks, cams.Ks[[0, 2]])
    assert len(cams[1:4]) == 3 and (cams[1:4].width, cams[1:4].height) == (10, 10)


def test_cat_and_to():
    cams = timed_cameras()
    both = Cameras.cat([cams[:2], cams[2:]])
    torch.testing.assert_close(both.camtoworlds, cams.camtoworlds)
    torch.testing.assert_close(both.distortion, cams.distortion)
    torch.testing.assert_close(both.times, cams.times)
    # A pinhole batch joins an OPENCV one with zero distortion.
    plain = Cameras(cams.camtoworlds[:1], cams.Ks[:1], 10, 10, "OPENCV")
    joined = Cameras.cat([plain, cams[:1]])
    torch.testing.assert_close(joined.distortion[0], torch.zeros(4))
    with pytest.raises(Snap3dError, match="one size"):
        Cameras.cat([cams, cams.rescaled(0.5)])
    moved = cams.to("cpu")
    assert moved.device.type == "cpu" and moved.times is not None


def test_invalid_cameras_are_refused():
    with pytest.raises(Snap3dError, match="camera model"):
        Cameras(torch.eye(4), torch.eye(3), 4, 4, "EQUIRECTANGULAR")
    with pytest.raises(Snap3dError, match="distortion"):
        Cameras(torch.eye(4), torch.eye(3), 4, 4, "OPENCV", torch.zeros(1, 3))


def test_look_at():
    eyes = torch.tensor([[5.0, 0.0, 0.0], [0.0, -4.0, 3.0]])
    c2w = look_at(eyes, torch.zeros(2, 3))
    R = c2w[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(2, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(2))
    torch.testing.assert_close(c2w[:, :3, 3], eyes)
    torch.testing.assert_close(c2w[:, :3, 2], -eyes / eyes.norm(dim=-1, keepdim=True))
    # From +x with z up: image right is +y and image down is -z.
    torch.testing.assert_close(c2w[0, :3, 0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(c2w[0, :3, 1], torch.tensor([0.0, 0.0, -1.0]))
    # A point above the target appears above the image centre.
    cams = Cameras(c2w, intrinsics_matrix(10, 10, 5, 5, 2, dtype=torch.float64), 10, 10)
    pix, _ = cams.project(torch.tensor([[0.0, 0.0, 0.5]]))
    assert bool((pix[:, 0, 1] < 5).all())
    # Looking straight along `up` still gives a valid rotation.
    down = look_at(torch.tensor([[0.0, 0.0, 5.0]]), torch.zeros(1, 3))
    torch.testing.assert_close(down[0, :3, 2], torch.tensor([0.0, 0.0, -1.0]))
    torch.testing.assert_close(torch.linalg.det(down[0, :3, :3]), torch.tensor(1.0))


def test_blend_quats_halves_a_turn_whatever_the_quaternion_signs():
    half = math.radians(45.0)  # a 90-degree turn about z
    turn = torch.tensor([math.cos(half), 0.0, 0.0, math.sin(half)])
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0])
    weights = torch.tensor([0.5, 0.5])
    want = torch.tensor([math.cos(half / 2), 0.0, 0.0, math.sin(half / 2)])  # 45 degrees
    for q in (torch.stack([identity, turn]), torch.stack([identity, -turn])):
        torch.testing.assert_close(blend_quats(q, weights, identity[None]), want)
    # opposite signs of one rotation do not cancel
    same = torch.stack([turn, -turn])
    torch.testing.assert_close(blend_quats(same, weights, turn[None]), turn)
