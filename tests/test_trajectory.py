"""Point-trajectory videos: the npz format, the regularisers, and carrying pixels' points
through a known deformation."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from snap3d.cameras import Cameras
from snap3d.errors import Snap3dError
from snap3d.io import SplatData
from snap3d.representations.base import SceneMeta
from snap3d.representations.splat4d import Splat4DConfig, Splat4DModel
from snap3d.representations.trajectory import (
    NPZ_LAYOUT,
    PointTrajectoryVideo,
    nearest_neighbors,
    rigidity_loss,
    rotation_rigidity_loss,
    smoothness_loss,
)


def random_video(T: int = 3, H: int = 6, W: int = 8, seed: int = 0) -> PointTrajectoryVideo:
    g = torch.Generator().manual_seed(seed)
    return PointTrajectoryVideo(
        rgb=torch.randint(0, 256, (T, H, W, 3), generator=g, dtype=torch.uint8),
        xyz=torch.randn(T, H, W, 3, generator=g),
        visible=torch.rand(T, H, W, generator=g) > 0.3,
        times=torch.linspace(0, 1, T),
        camtoworlds=torch.eye(4).repeat(T, 1, 1),
        Ks=torch.tensor([[8.0, 0, 4], [0, 8.0, 3], [0, 0, 1]]).repeat(T, 1, 1),
    )


# -- the file format ---------------------------------------------------------------------


def test_npz_round_trip_keys_shapes_dtypes(tmp_path):
    video = random_video()
    path = video.save(tmp_path / "clip.npz")
    with np.load(path) as data:
        assert sorted(data.files) == sorted(NPZ_LAYOUT)
        assert data["rgb"].shape == (3, 6, 8, 3) and data["rgb"].dtype == np.uint8
        assert data["xyz"].shape == (3, 6, 8, 3) and data["xyz"].dtype == np.float32
        assert data["visible"].shape == (3, 6, 8) and data["visible"].dtype == np.bool_
        assert data["times"].shape == (3,) and data["times"].dtype == np.float32
        assert data["camtoworlds"].shape == (3, 4, 4) and data["Ks"].shape == (3, 3, 3)
    back = PointTrajectoryVideo.load(path)
    for key in NPZ_LAYOUT:
        assert torch.equal(getattr(back, key), getattr(video, key)), key
    cams = back.cameras
    assert (cams.width, cams.height, len(cams)) == (8, 6, 3)
    assert torch.equal(cams.times, video.times)


def test_bad_files_and_shapes_are_named(tmp_path):
    good = {k: getattr(random_video(), k).numpy() for k in NPZ_LAYOUT}
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in good.items() if k != "visible"})
    with pytest.raises(Snap3dError, match="lacks"):
        PointTrajectoryVideo.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "dtype.npz", **{**good, "xyz": good["xyz"].astype(np.float64)})
    with pytest.raises(Snap3dError, match="xyz must be float32"):
        PointTrajectoryVideo.load(tmp_path / "dtype.npz")
    np.savez(tmp_path / "frames.npz", **{**good, "times": good["times"][:2]})
    with pytest.raises(Snap3dError, match="times must have shape"):
        PointTrajectoryVideo.load(tmp_path / "frames.npz")
    with pytest.raises(Snap3dError, match="missing"):
        PointTrajectoryVideo.load(tmp_path / "nothing.npz")
    with pytest.raises(Snap3dError, match="rgb must be uint8"):
        PointTrajectoryVideo(**{k: torch.from_numpy(v) for k, v in good.items()} | {
            "rgb": torch.zeros(3, 6, 8, 3)
        })  # fmt: skip


def test_preview_codes_position_and_dims_hidden_points(tmp_path):
    video = random_video(T=2, H=4, W=4)
    video.xyz[1] = video.xyz[0]
    video.visible[:] = True
    video.visible[1, 0, 0] = False  # hidden in frame 1: dimmed to a quarter
    video.visible[:, 3, 3] = False  # never seen: black
    frames = video.preview_frames()
    assert len(frames) == 2 and frames[0].shape == (4, 8, 3) and frames[0].dtype == np.uint8
    assert np.array_equal(frames[0][:, :4], video.rgb[0].numpy())
    assert np.array_equal(frames[0][1:3, 4:], frames[1][1:3, 4:])
    dimmed = frames[1][0, 4].astype(float)
    assert np.allclose(dimmed, frames[0][0, 4] / 4, atol=1)
    assert (frames[0][3, 7] == 0).all()
    out = video.write_preview(tmp_path / "clip.mp4")
    assert out.is_file() and out.stat().st_size > 0


def test_preview_without_ffmpeg_names_the_file_and_the_package(tmp_path, monkeypatch):
    # Without imageio-ffmpeg, imageio would hand the .mp4 to another plugin and fail deep
    # inside it (seen: TiffWriter.write() got an unexpected keyword argument 'fps').
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(Snap3dError, match=r"clip\.mp4: .*imageio-ffmpeg"):
        random_video(T=2, H=4, W=4).write_preview(tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []


# -- regularisers ------------------------------------------------------------------------


def rotation_z(angle: float) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_nearest_neighbors_match_brute_force():
    points = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    idx = nearest_neighbors(points, 4)
    d = torch.cdist(points, points)
    d.fill_diagonal_(math.inf)
    assert torch.equal(idx, d.topk(4, largest=False).indices)
    queries = points[:5] + 1e-4
    assert torch.equal(nearest_neighbors(points, 1, queries=queries)[:, 0], torch.arange(5))


def test_rigidity_is_zero_for_rigid_motion_and_positive_otherwise():
    points = torch.randn(40, 3, generator=torch.Generator().manual_seed(2))
    neighbors = nearest_neighbors(points, 6)
    rigid = torch.stack([points @ rotation_z(0.7 * t).T + t for t in (0.0, 0.5, 1.0)])
    assert float(rigidity_loss(rigid, neighbors)) < 1e-10
    stretched = torch.stack([points * (1 + 0.2 * t) for t in (0.0, 0.5, 1.0)])
    d = (points[:, None] - points[neighbors]).norm(dim=-1)  # stretched by 10% then 20%
    expected = ((0.1 * d).square().mean() + (0.2 * d).square().mean()) / 2
    torch.testing.assert_close(rigidity_loss(stretched, neighbors), expected)
    # anchors: only the first A points' neighbourhoods count.
    wobble = rigid.clone()
    wobble[1:, 30:] += 0.5
    far = torch.tensor([[31, 32]]).expand(5, 2)  # points 0..4 linked to moved ones
    assert float(rigidity_loss(wobble, nearest_neighbors(points[:30], 3))) < 1e-10
    assert float(rigidity_loss(wobble, far)) > 1e-3


def test_rotation_rigidity_asks_the_rotations_to_follow_the_motion():
    points = torch.randn(40, 3, generator=torch.Generator().manual_seed(5))
    neighbors = nearest_neighbors(points, 6)
    angles = (0.0, 0.4, 1.1)
    turns = torch.stack([rotation_z(a) for a in angles])
    rigid = torch.stack([points @ r.T + 0.3 * k for k, r in enumerate(turns)])
    # every anchor starts in its own frame and turns with the body: zero
    swap = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # z -> x
    own = torch.stack([swap @ rotation_z(0.1 * k) @ swap.T for k in range(40)])
    rotations = turns[:, None] @ own
    assert float(rotation_rigidity_loss(rigid, rotations, neighbors)) < 1e-10
    # rotations that stay put: each offset o is expected unturned, |R o - o|^2 =
    # 2 (1 - cos a) |o_xy|^2 for a turn by a about z
    still = torch.eye(3).expand(3, 40, 3, 3)
    o = points[neighbors] - points[:, None]
    xy = o[..., :2].square().sum(-1)
    expected = sum(2 * (1 - math.cos(a)) * xy.mean() for a in angles[1:]) / 2
    torch.testing.assert_close(rotation_rigidity_loss(rigid, still, neighbors), expected)
    # a stretch keeps no offset, whatever the rotations
    stretched = torch.stack([points * (1 + 0.2 * k) for k in range(3)])
    assert float(rotation_rigidity_loss(stretched, still, neighbors)) > 1e-3


def test_rigidity_gradient_is_finite_for_coincident_points():
    xyz = torch.zeros(2, 2, 3, requires_grad=True)
    rigidity_loss(xyz, torch.tensor([[1], [0]])).backward()
    assert torch.isfinite(xyz.grad).all()


def test_smoothness_is_zero_for_constant_velocity_and_positive_when_accelerating():
    start = torch.randn(10, 3, generator=torch.Generator().manual_seed(3))
    velocity = torch.randn(10, 3, generator=torch.Generator().manual_seed(4))
    ts = torch.linspace(0, 1, 5)[:, None, None]
    assert float(smoothness_loss(start.expand(5, -1, -1))) == 0
    assert float(smoothness_loss(start + velocity * ts)) < 1e-12
    # x = v t^2: second differences 2 v dt^2 everywhere.
    expected = (2 * velocity * 0.25**2).square().sum(-1).mean()
    torch.testing.assert_close(smoothness_loss(start + velocity * ts**2), expected)


# -- carrying pixels through a known deformation ------------------------------------------


class ShiftFarGaussians(nn.Module):
    """A stand-in deformation field: Gaussians beyond z = 3 move by ``velocity * t``."""

    def __init__(self, velocity: Tensor, frame_times: Tensor):
        super().__init__()
        self.velocity = velocity
        self.frame_times = frame_times

    def forward(self, means: Tensor, times: Tensor) -> dict[str, Tensor]:
        moving = (means[:, 2:3] > 3).float()
        return {"means": moving * self.velocity * times[:, None]}


def wall(x: tuple[float, float], y: tuple[float, float], z: float, spacing: float) -> Tensor:
    """Means on a grid in the plane at depth z, jittered in depth by up to 0.01 so that
    the front-to-back order is not the storage order (ties would bias the blend)."""
    xs = torch.arange(x[0], x[1] + 1e-6, spacing)
    ys = torch.arange(y[0], y[1] + 1e-6, spacing)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    gz = z + 0.01 * torch.rand(gx.shape, generator=torch.Generator().manual_seed(0))
    return torch.stack([gx, gy, gz], -1).reshape(-1, 3)


@pytest.fixture
def two_walls() -> tuple[Splat4DModel, Cameras]:
    """A far wall (z = 4) sliding along +x behind a static near wall (z = 2) that hides
    the right half of a 32 px camera at the origin looking down +z."""
    spacing = 0.05
    far = wall((-3.0, 3.0), (-2.5, 2.5), 4.0, spacing)
    near = wall((0.0, 1.5), (-1.5, 1.5), 2.0, spacing)
    means = torch.cat([far, near])
    n = means.shape[0]
    # the near wall is opaque; the far one blends many Gaussians per pixel.
    opacities = torch.cat([torch.zeros(len(far)), torch.full((len(near),), 5.0)])
    scene = SceneMeta(bounds=[[-3, -3, 0], [3, 3, 5]], camera_extent=1.0, background=[0, 0, 0])
    model = Splat4DModel(Splat4DConfig(sh_degree=0, backend="torch"), scene)
    model.set_splats(
        SplatData(
            means=means,
            quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
            scales=torch.log(torch.tensor([spacing, spacing, 0.01])).repeat(n, 1),
            opacities=opacities,
            sh0=torch.full((n, 1, 3), 0.5),
            shN=torch.zeros(n, 0, 3),
        )
    )
    model.deformation = ShiftFarGaussians(torch.tensor([1.0, 0.0, 0.0]), torch.linspace(0, 1, 3))
    K = torch.tensor([[[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]]])
    return model.eval(), Cameras(torch.eye(4)[None], K, 32, 32)


def test_trajectories_follow_a_known_deformation(two_walls):
    model, camera = two_walls
    times = torch.tensor([0.0, 0.25, 0.5, 1.0])
    video = model.trajectory_video(camera, times)
    assert video.xyz.shape == (4, 32, 32, 3) and video.visible.shape == (4, 32, 32)
    assert torch.equal(video.camtoworlds, torch.eye(4).repeat(4, 1, 1))
    cols = torch.arange(32) + 0.5
    # left half: the far wall, whose point at pixel x lies on the pixel's ray at
    # X = (x - 16) / 32 * 4 (to 0.01, the wall's depth jitter; blending the centres of the
    # Gaussians around the ray instead was off by up to 0.1).
    left = video.xyz[:, 4:28, 2:12]
    expected_x = ((cols[2:12] - 16) / 8)[None, None, :] + times[:, None, None]
    torch.testing.assert_close(left[..., 0], expected_x.expand_as(left[..., 0]), atol=0.01, rtol=0)
    torch.testing.assert_close(
        left[..., 2], torch.full_like(left[..., 2], 4.005), atol=0.005, rtol=0
    )
    # the right half sees the static near wall: it does not move and stays visible.
    right = video.xyz[:, 4:28, 18:30]
    torch.testing.assert_close(right, right[:1].expand_as(right), atol=1e-5, rtol=0)
    assert video.visible[:, 4:28, 18:30].all()
    # far-wall points are visible until they slide under the near wall (X > 0) ...
    x_now = expected_x.expand(4, 24, 10)
    vis = video.visible[:, 4:28, 2:12]
    assert vis[x_now < -0.4].all() and not vis[x_now > 0.4].any()
    # ... and carried exactly with their Gaussians: differences are the motion itself.
    shift = left - left[:1]
    torch.testing.assert_close(shift[..., 0], times[:, None, None].expand(4, 24, 10))


def test_median_depth_lies_on_the_front_surface_where_the_expected_depth_does_not():
    """A half-transparent Gaussian (opacity 0.7) at depth 2 in front of an opaque one at
    3: the expected depth lies between them (2.3), the median on the front one."""

    def model_of(depths: list[float], opacities: list[float]) -> Splat4DModel:
        n = len(depths)
        scene = SceneMeta(bounds=[[-3, -3, 0], [3, 3, 5]], camera_extent=1.0, background=[0, 0, 0])
        model = Splat4DModel(Splat4DConfig(sh_degree=0, backend="torch"), scene)
        model.set_splats(
            SplatData(
                means=torch.tensor([[0.0, 0.0, d] for d in depths]),
                quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                scales=torch.log(torch.tensor([0.5, 0.5, 0.01])).repeat(n, 1),
                opacities=torch.logit(torch.tensor(opacities)),
                sh0=torch.full((n, 1, 3), 0.5),
                shN=torch.zeros(n, 0, 3),
            )
        )
        return model.eval()

    K = torch.tensor([[[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]]])
    camera = Cameras(torch.eye(4)[None], K, 32, 32)
    model = model_of([2.0, 3.0], [0.7, 0.99])
    with torch.no_grad():
        gaussians = model.gaussians_at(0.0)
        out, alpha, _ = model.rasterize(gaussians, camera, sh_degree=0)
        median = model.median_depth(gaussians, camera)
    centre = (slice(14, 18), slice(14, 18))
    expected = (0.7 * 2 + 0.3 * 0.99 * 3) / (0.7 + 0.3 * 0.99)
    torch.testing.assert_close(
        out[0, ..., 3][centre], torch.full((4, 4), expected), atol=0.02, rtol=0
    )
    spacing = 1.0 / 127  # 128 levels over the Gaussians' depths, 2 to 3
    assert (median[centre] - 2.0).abs().max() < spacing
    # a lone Gaussian: its own depth, exactly
    lone = model_of([3.0], [0.99])
    with torch.no_grad():
        torch.testing.assert_close(
            lone.median_depth(lone.gaussians_at(0.0), camera)[centre], torch.full((4, 4), 3.0)
        )


def test_trajectory_export_writes_npz_and_preview(two_walls, tmp_path):
    model, camera = two_walls
    model.export_camtoworlds = camera.camtoworlds
    model.export_Ks = camera.Ks
    model.scene.width = model.scene.height = 32
    out = model.export("trajectory-video", tmp_path / "walls.npz", camera=0, times=(0.0, 1.0))
    video = PointTrajectoryVideo.load(out)
    assert video.rgb.shape == (2, 32, 32, 3) and bool(video.visible[0].any())
    assert (tmp_path / "walls.mp4").is_file()
    with pytest.raises(Snap3dError, match="out of range"):
        model.export("trajectory-video", tmp_path / "x.npz", camera=3)
    with pytest.raises(Snap3dError, match="not 'gif'"):
        model.export("gif", tmp_path / "x.gif")
