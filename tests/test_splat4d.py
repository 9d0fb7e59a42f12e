"""splat4d: HexPlane sampling against hand computations, the identity at initialisation,
learning a motion, per-frame codes, rendering at times, and training end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from snap3d.cameras import Cameras, look_at, quat_to_rotmat
from snap3d.errors import Snap3dError
from snap3d.io import SplatData
from snap3d.io.export import export_run
from snap3d.representations.base import SceneMeta
from snap3d.representations.hexplane import PLANES, HexPlane
from snap3d.representations.splat import SplatConfig, SplatModel
from snap3d.representations.splat4d import (
    DeformationField,
    Splat4DConfig,
    Splat4DModel,
    farthest_points,
    kmeans,
    quat_multiply,
)
from snap3d.representations.trajectory import PointTrajectoryVideo
from snap3d.train import TrainConfig, Trainer, load_model
from snap3d.train.checkpoint import config_from_dict, config_to_dict

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY = dict(
    plane_features=4, plane_resolution=4, plane_time_resolution=4, plane_multires=(1,),
    deform_width=16, init_num_points=300, sh_degree=1, motion_samples=32,
)  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many small operations; on a shared two-core machine one thread is
    several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bilinear(grid: np.ndarray, u: float, v: float) -> np.ndarray:
    """Hand bilinear lookup of grid [C,H,W] at u, v in [0, 1] (corners on cell centres)."""
    C, H, W = grid.shape
    x, y = u * (W - 1), v * (H - 1)
    x0, y0 = min(int(x), W - 2), min(int(y), H - 2)
    fx, fy = x - x0, y - y0
    return (
        grid[:, y0, x0] * (1 - fx) * (1 - fy)
        + grid[:, y0, x0 + 1] * fx * (1 - fy)
        + grid[:, y0 + 1, x0] * (1 - fx) * fy
        + grid[:, y0 + 1, x0 + 1] * fx * fy
    )


def test_hexplane_matches_a_hand_computation():
    bounds = torch.tensor([[-1.0, 0.0, 2.0], [1.0, 4.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    field = HexPlane(bounds, (0.0, 2.0), feature_dim=2, resolution=3, time_resolution=5,
                     multires=(1, 2), generator=g)  # fmt: skip
    for grid in field.grids:  # random values everywhere, time planes included
        grid.data = torch.rand(grid.shape, generator=g)
    assert [tuple(p.shape) for p in field.grids[:6]] == [
        (1, 2, 3, 3), (1, 2, 3, 3), (1, 2, 3, 3), (1, 2, 5, 3), (1, 2, 5, 3), (1, 2, 5, 3)
    ]  # fmt: skip
    assert tuple(field.grids[6].shape) == (1, 2, 6, 6) and field.output_dim == 4
    points = torch.tensor([[0.3, 1.0, 2.9], [-1.0, 4.0, 2.0], [0.77, 2.5, 2.25]])
    times = torch.tensor([0.5, 2.0, 1.3])
    out = field(points, times).detach().numpy()
    lo, hi = bounds.numpy()
    for i in range(3):
        unit = np.append((points[i].numpy() - lo) / (hi - lo), float(times[i]) / 2.0)
        expected = []
        for s in range(2):
            product = np.ones(2)
            for j, (a, b) in enumerate(PLANES):
                grid = field.grids[6 * s + j].detach().numpy()[0]
                product = product * bilinear(grid, unit[a], unit[b])
            expected.append(product)
        np.testing.assert_allclose(out[i], np.concatenate(expected), rtol=1e-5, atol=1e-6)


def test_hexplane_starts_time_independent_and_regularisers_vanish_where_they_should():
    field = HexPlane(torch.tensor([[0.0] * 3, [1.0] * 3]), (0.0, 1.0), feature_dim=3,
                     resolution=4, time_resolution=6)  # fmt: skip
    p = torch.rand(10, 3)
    field.requires_grad_(False)
    torch.testing.assert_close(field(p, torch.zeros(10)), field(p, torch.ones(10)))
    assert float(field.time_l1()) == 0 and float(field.time_smoothness()) == 0
    assert float(field.total_variation()) > 0
    for grid in field.planes((0, 1, 2)):
        grid.data.fill_(0.3)
    for grid in field.planes((3, 4, 5)):  # linear in time: no second difference
        grid.data = 1 + 0.1 * torch.arange(grid.shape[2]).float()[None, None, :, None].expand_as(
            grid
        )
    assert float(field.total_variation()) == 0
    assert float(field.time_smoothness()) < 1e-12 and float(field.time_l1()) > 0


def test_hold_after_continues_the_field_from_the_last_trained_time():
    field = HexPlane(torch.tensor([[0.0] * 3, [1.0] * 3]), (0.0, 1.0), feature_dim=2,
                     resolution=4, time_resolution=5, generator=torch.Generator().manual_seed(1))  # fmt: skip
    field.requires_grad_(False)
    for grid in field.planes((3, 4, 5)):  # a time-dependent field: cell k holds 1 + k
        grid.data = 1 + torch.arange(5.0)[None, None, :, None].expand_as(grid).clone()
    p = torch.rand(20, 3)
    before = {t: field(p, torch.full((20,), t)) for t in (0.1, 0.3, 0.6)}
    field.hold_after(0.3)  # u = 1.2: frames at 0.3 read cells 1 and 2; cells 3, 4 copy 2
    for grid in field.planes((3, 4, 5)):
        torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([1.0, 2, 3, 3, 3]))
    for t in (0.1, 0.3):  # times up to the held one keep their features
        torch.testing.assert_close(field(p, torch.full((20,), t)), before[t])
    for t in (0.6, 0.8, 1.0):  # later times read the last cell's values (t = 0.5: cell 2)
        torch.testing.assert_close(field(p, torch.full((20,), t)), field(p, torch.full((20,), 0.5)))
    assert not torch.allclose(field(p, torch.full((20,), 0.6)), before[0.6])
    field.hold_after(1.0)  # the whole range: nothing left to hold
    for grid in field.planes((3, 4, 5)):
        torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([1.0, 2, 3, 3, 3]))
    for grid in field.planes((3, 4, 5)):  # cells 0..2 change 1, then 2, a cell
        grid.data = torch.tensor([1.0, 2, 4, 9, 9])[None, None, :, None].expand_as(grid).clone()
    field.hold_after(0.3, extrapolate=True)  # cells 3, 4 go on at cell 2's speed
    for grid in field.planes((3, 4, 5)):
        torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([1.0, 2, 4, 6, 8]))
    field.hold_after(0.0, extrapolate=True)  # no earlier cell: a plain hold
    for grid in field.planes((3, 4, 5)):
        torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([1.0, 1, 1, 1, 1]))


def test_fit_bounds_spans_the_points_with_a_margin():
    field = HexPlane(torch.tensor([[-5.0] * 3, [5.0] * 3]), (0.0, 1.0), feature_dim=2,
                     resolution=4, time_resolution=3)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    points = torch.rand(1001, 3, generator=g) * torch.tensor([2.0, 1.0, 0.5])
    points[0] = torch.tensor([100.0, -100.0, 50.0])  # one outlier: ignored by the quantiles
    field.fit_bounds(points, margin=0.1, quantile=0.005)
    lo, hi = torch.quantile(points, torch.tensor([0.005, 0.995]), dim=0)
    torch.testing.assert_close(
        field.bounds, torch.stack([lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)])
    )
    assert (field.bounds[1] - field.bounds[0] < torch.tensor([2.5, 1.3, 0.7])).all()


def random_splats(n: int, seed: int = 0, sh_degree: int = 1) -> SplatData:
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2 - 1
    return SplatData(
        means=torch.rand(n, 3, generator=g) - 0.5,
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=torch.full((n, 3), -3.0) + 0.3 * torch.rand(n, 3, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g) * 0.5,
        shN=torch.randn(n, k, 3, generator=g) * 0.1,
    )


def orbit_cameras(n: int, size: int = 24, times: list[float] | None = None) -> Cameras:
    angles = torch.linspace(0, 2, n)
    eyes = torch.stack([3 * torch.cos(angles), 3 * torch.sin(angles), torch.full((n,), 1.0)], -1)
    c2w = look_at(eyes, torch.zeros(n, 3), up=torch.tensor([0.0, 0.0, 1.0]))
    K = torch.tensor([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1]])
    t = None if times is None else torch.tensor(times)
    return Cameras(c2w, K.repeat(n, 1, 1), size, size, times=t)


SCENE = SceneMeta(bounds=[[-1, -1, -1], [1, 1, 1]], camera_extent=3.0, background=[1, 1, 1],
                  time_range=(0.0, 1.0))  # fmt: skip


def test_the_field_starts_as_the_identity():
    model = Splat4DModel(Splat4DConfig(**TINY), SCENE)
    model.set_splats(random_splats(200))
    model.deformation.set_frames(torch.linspace(0, 1, 5))
    static = SplatModel(SplatConfig(sh_degree=1, eps2d=model.config.eps2d), SCENE)
    static.set_splats(random_splats(200))
    cams = orbit_cameras(1)
    reference = static.render(cams).rgb
    for t in (0.0, 0.37, 1.0):
        offsets = model.deformation(model.splats["means"], torch.full((200,), t))
        assert all(v.abs().max().item() == 0 for v in offsets.values())
        cams.times = torch.tensor([t])
        torch.testing.assert_close(model.render(cams).rgb, reference)


def test_the_field_learns_a_linear_motion():
    """Fit the field directly (no rendering) to points moving at constant velocity."""
    config = Splat4DConfig(**TINY | {"plane_resolution": 8, "plane_time_resolution": 8})
    field = DeformationField(config, torch.tensor([[-1.0] * 3, [1.0] * 3]), (0.0, 1.0))
    g = torch.Generator().manual_seed(0)
    points = torch.rand(128, 3, generator=g) * 1.6 - 0.8
    velocity = torch.tensor([0.3, -0.2, 0.1])
    opt = torch.optim.Adam(field.parameters(), lr=2e-2)
    for _ in range(150):
        t = torch.rand(128, generator=g)
        offset = field(points, t)["means"]
        loss = (offset - velocity * t[:, None]).square().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for t in (0.1, 0.55, 0.9):
            error = field(points, torch.full((128,), t))["means"] - velocity * t
            assert float(error.norm(dim=-1).mean()) < 0.05 * float(velocity.norm()), t


def test_the_field_recovers_when_every_trunk_unit_is_off():
    """A trunk whose last layer is off for every input still passes gradient to the
    planes (with plain ReLUs it did not, and training runs died into a static scene)."""
    field = DeformationField(Splat4DConfig(**TINY), torch.tensor([[-1.0] * 3, [1.0] * 3]), (0, 1))
    with torch.no_grad():
        field.trunk[-2].bias.fill_(-100.0)  # every pre-activation of the last layer < 0
        for head in field.heads.values():
            head.weight.normal_()
    points = torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    field(points, torch.rand(64))["means"].square().sum().backward()
    grads = [p.grad for p in field.grid.parameters()] + [field.trunk[0].weight.grad]
    assert all(g is not None and float(g.abs().max()) > 0 for g in grads)


def test_frame_codes_interpolate_between_frames():
    config = Splat4DConfig(**TINY | {"frame_code_dim": 2})
    field = DeformationField(config, torch.tensor([[-1.0] * 3, [1.0] * 3]), (0.0, 1.0))
    field.set_frames(torch.tensor([0.0, 0.5, 1.0]))
    field.frame_codes.data = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    codes = field.frame_code(torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0, 1.5]))
    expected = torch.tensor([[0, 1], [1, 2], [2, 3], [3.6, 4.6], [4, 5], [4, 5.0]])
    torch.testing.assert_close(codes, expected)


def test_render_uses_each_cameras_time():
    model = Splat4DModel(Splat4DConfig(**TINY), SCENE)
    model.set_splats(random_splats(150))
    model.deformation.set_frames(torch.linspace(0, 1, 4))
    with torch.no_grad():  # a field that moves things: the position head's bias grows with t
        model.deformation.grid.planes((3, 4, 5))[0].data.uniform_(0, 2)
        model.deformation.heads["means"].weight.normal_(0, 0.5)
    cams = orbit_cameras(3, times=[0.0, 1.0, 0.0])
    together = model.render(cams)
    alone = [model.render(cams[i]).rgb for i in range(3)]
    torch.testing.assert_close(together.rgb, torch.cat(alone))
    assert together.depth.shape == (3, 24, 24, 1)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # times differ: images differ
    # one time: one rasterization, whose meta the densification reads.
    assert "radii" in model.render(cams[[0, 2]]).extras and "radii" not in together.extras


@pytest.mark.parametrize("controls", [0, 24])
def test_motion_samples_follow_the_field_at_every_sampled_time(controls):
    model = Splat4DModel(Splat4DConfig(**TINY | {"control_points": controls}), SCENE)
    model.set_splats(random_splats(200))
    model._sample_controls()
    model.deformation.set_frames(torch.linspace(0, 1, 5))  # frame spacing 0.25
    with torch.no_grad():  # a field that moves things differently at each time
        model.deformation.grid.planes((3, 4, 5))[0].data.uniform_(0, 2)
        model.deformation.heads["means"].weight.normal_(0, 0.5)
        model.deformation.heads["quats"].weight.normal_(0, 0.5)
    cases = [
        (None, None, (0.25, 0.5, 0.75)),
        (0.1, None, (0.25, 0.5, 0.75, 0.1)),
        (None, 0.75, (0.25, 0.5, 0.75)),  # t + dt trained: centred on t
        # t + dt past the latest time trained: the two frames before t
        (None, 0.6, (0.0, 0.25, 0.5)),
        (0.1, 0.5, (0.0, 0.25, 0.5, 0.1)),
    ]
    for span, latest, times in cases:
        torch.manual_seed(0)
        gaussians, (xyz, neighbors, quats) = model.deform(
            0.5, motion_samples=True, span_time=span, latest=latest
        )
        assert xyz.shape == (len(times), 32 * 9, 3) and neighbors.shape == (32, 8)
        # every sampled point is where the field puts some Gaussian at that time
        for k, t in enumerate(times):
            at_t = model.gaussians_at(t)["means"].detach()
            d = torch.cdist(xyz[k].detach(), at_t, compute_mode="donot_use_mm_for_euclid_dist")
            assert float(d.min(1).values.max()) < 1e-5, (span, t)
            # the anchors' rotations at that time are those of the same Gaussians
            which = d[: len(neighbors)].argmin(1)
            turned = model.gaussians_at(t)["quats"].detach()[which]
            torch.testing.assert_close(quats[k].detach(), turned)
        torch.testing.assert_close(gaussians["means"], model.gaussians_at(0.5)["means"])
        assert not torch.allclose(xyz[0], xyz[-1], atol=1e-3)


def axis_angle_quat(axis: list[float], degrees: float) -> Tensor:
    half = torch.deg2rad(torch.tensor(degrees)) / 2
    axis_t = torch.nn.functional.normalize(torch.tensor(axis), dim=0)
    return torch.cat([torch.cos(half)[None], torch.sin(half) * axis_t])


def test_quat_multiply_composes_rotations():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 4, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(16, 4, generator=g), dim=-1)
    torch.testing.assert_close(
        quat_to_rotmat(quat_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b)
    )


def test_farthest_points_cover_separate_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0, 0], [5, 0, 0], [0, 5, 0], [0, 0, 5]])
    points = (centres[:, None] + 0.1 * torch.randn(4, 50, 3, generator=g)).reshape(-1, 3)
    picked = farthest_points(points, 4)
    assert sorted(torch.cdist(picked, centres).argmin(1).tolist()) == [0, 1, 2, 3]
    assert farthest_points(points[:3], 10).shape == (3, 3)


def test_control_points_carry_gaussians_through_a_rigid_motion_exactly():
    """Controls that each move by the same rigid motion (about themselves) blend into that
    motion for every Gaussian, whatever their weights: positions and rotations."""
    model = Splat4DModel(Splat4DConfig(**TINY | {"control_points": 32}), SCENE)
    model.set_splats(random_splats(300))
    model._sample_controls()
    controls = model.control_means
    assert controls.shape == (32, 3) and bool((model.control_radii > 0).all())
    # every control is one of the solid splats
    splats = model.splats
    solid = splats["means"][torch.sigmoid(splats["opacities"]) > 0.1].detach()
    assert float((controls[:, None] - solid).norm(dim=-1).min(1).values.max()) == 0
    q = axis_angle_quat([1.0, 2.0, 3.0], 50.0)
    R, shift = quat_to_rotmat(q), torch.tensor([0.1, -0.2, 0.3])

    def rigid_field(points: Tensor, times: Tensor) -> dict[str, Tensor]:
        assert bool((points == controls.repeat(len(points) // 32, 1)).all())
        return {
            "means": points @ R.T + shift - points,
            "quats": (q - torch.tensor([1.0, 0, 0, 0])).expand(len(points), 4),
        }

    model.deformation.forward = rigid_field
    moved = model.gaussians_at(0.5)
    canonical = model.splats["means"].detach()
    torch.testing.assert_close(moved["means"].detach(), canonical @ R.T + shift)
    turned = quat_to_rotmat(moved["quats"].detach())
    torch.testing.assert_close(turned, R @ quat_to_rotmat(model.splats["quats"].detach()))


def test_control_points_blend_scale_and_opacity_offsets_too():
    config = TINY | {"control_points": 16, "deform_scales": True, "deform_opacity": True}
    model = Splat4DModel(Splat4DConfig(**config), SCENE)
    model.set_splats(random_splats(100))
    model._sample_controls()

    def uniform_field(points: Tensor, times: Tensor) -> dict[str, Tensor]:
        n = len(points)
        return {"means": torch.zeros(n, 3), "quats": torch.zeros(n, 4),
                "scales": torch.full((n, 3), 0.5), "opacities": torch.full((n,), -2.0)}  # fmt: skip

    model.deformation.forward = uniform_field
    moved = model.gaussians_at(0.3)
    torch.testing.assert_close(moved["scales"], model.splats["scales"] + 0.5)
    torch.testing.assert_close(moved["opacities"], model.splats["opacities"] - 2.0)
    torch.testing.assert_close(moved["means"], model.splats["means"])


def test_bad_control_and_time_cell_settings_are_refused():
    with pytest.raises(Snap3dError, match="frames_per_time_cell"):
        Splat4DModel(Splat4DConfig(**TINY | {"frames_per_time_cell": 0}), SCENE)
    with pytest.raises(Snap3dError, match="control_neighbors"):
        Splat4DModel(Splat4DConfig(**TINY | {"control_points": 8, "control_neighbors": 0}), SCENE)
    with pytest.raises(Snap3dError, match="needs control_points"):
        Splat4DModel(Splat4DConfig(**TINY | {"control_motion": "frames"}), SCENE)
    with pytest.raises(Snap3dError, match="deform_scales"):
        config = {"control_points": 8, "control_motion": "frames", "deform_scales": True}
        Splat4DModel(Splat4DConfig(**TINY | config), SCENE)
    with pytest.raises(Snap3dError, match="deform_opacity"):
        config = {"control_points": 8, "control_motion": "bases", "deform_opacity": True}
        Splat4DModel(Splat4DConfig(**TINY | config), SCENE)
    with pytest.raises(Snap3dError, match="motion_bases"):
        config = {"control_points": 8, "control_motion": "bases", "motion_bases": 0}
        Splat4DModel(Splat4DConfig(**TINY | config), SCENE)


def frames_model(controls: int = 16, frames: int = 5, **config) -> Splat4DModel:
    """A model whose controls move by a per-frame table, over ``frames`` frames in [0, 1]."""
    options = TINY | {"control_points": controls, "control_motion": "frames"} | config
    model = Splat4DModel(Splat4DConfig(**options), SCENE)
    model.set_splats(random_splats(200))
    model.deformation.set_frames(torch.linspace(0, 1, frames))
    model._sample_controls()
    return model


def rigid_table(model: Splat4DModel, q: Tensor, shift: Tensor, frame: int) -> None:
    """Set every control's motion at ``frame`` to the rigid motion x -> R(q) x + shift."""
    c = model.control_means
    R = quat_to_rotmat(q)
    field = model.deformation
    with torch.no_grad():
        field.control_shifts[frame] = c @ R.T + shift - c
        field.control_turns[frame] = q - torch.tensor([1.0, 0, 0, 0])


def test_per_frame_control_motions_are_exact_at_frames_and_linear_between():
    model = frames_model()
    q = axis_angle_quat([0.0, 0.0, 1.0], 40.0)
    rigid_table(model, q, torch.tensor([0.2, 0.0, -0.1]), frame=2)  # the frame at t = 0.5
    canonical = model.splats["means"].detach()
    R = quat_to_rotmat(q)
    moved = model.gaussians_at(0.5)
    torch.testing.assert_close(
        moved["means"].detach(), canonical @ R.T + torch.tensor([0.2, 0, -0.1])
    )
    turned = quat_to_rotmat(moved["quats"].detach())
    torch.testing.assert_close(turned, R @ quat_to_rotmat(model.splats["quats"].detach()))
    # frames 1 and 3 are still: a quarter of a frame on, a quarter of the shift
    shifts, _ = model.deformation.control_motion(torch.tensor([0.3125]), model.control_means)
    torch.testing.assert_close(shifts, 0.25 * model.deformation.control_shifts[2])
    torch.testing.assert_close(model.gaussians_at(0.25)["means"], model.splats["means"])


def test_resampled_controls_keep_the_motion():
    """New controls take the old ones' motions: a rigid motion stays exactly that."""
    model = frames_model(controls=24)
    q, shift = axis_angle_quat([1.0, -1.0, 0.5], 30.0), torch.tensor([0.0, 0.3, 0.1])
    rigid_table(model, q, shift, frame=4)
    before = model.gaussians_at(1.0)["means"].detach()
    with torch.no_grad():  # the canonical splats move: the resample picks new controls
        model.splats["means"] += 0.05 * torch.randn(
            200, 3, generator=torch.Generator().manual_seed(3)
        )
    old = model.control_means.clone()
    model._sample_controls()
    assert not torch.equal(old, model.control_means)
    canonical = model.splats["means"].detach()
    torch.testing.assert_close(
        model.gaussians_at(1.0)["means"].detach(), canonical @ quat_to_rotmat(q).T + shift
    )
    assert before.shape == canonical.shape


def test_per_frame_control_motions_hold_past_the_window():
    model = frames_model()
    field = model.deformation
    with torch.no_grad():
        field.control_shifts[1] = 0.1
        field.control_shifts[2] = 0.3
    field.hold_after(0.5)  # frames at 0.75 and 1 copy the frame at 0.5
    torch.testing.assert_close(
        field.control_shifts[3:], field.control_shifts[2:3].expand(2, -1, -1)
    )
    field.hold_after(0.5, extrapolate=True)  # or go on at its speed: +0.2 a frame
    torch.testing.assert_close(field.control_shifts[4, 0], torch.full((3,), 0.7))


def test_per_frame_control_regularisers_vanish_for_rigid_motion():
    model = frames_model(control_arap_weight=1.0, control_smoothness_weight=1.0)
    q = axis_angle_quat([0.0, 1.0, 1.0], 25.0)
    for frame in range(5):  # turned, then sliding at constant speed: rigid and smooth
        rigid_table(model, q, torch.tensor([0.1, 0.0, 0.0]) * frame, frame)
    losses = {k: float(v) for k, v in model._control_regularisers(None).items()}
    assert set(losses) == {"control_rigidity", "control_arap", "control_smoothness"}
    assert max(losses.values()) < 1e-10
    with torch.no_grad():
        model.deformation.control_shifts[2, 0] += 0.1  # one control off its path
    bent = model._control_regularisers(None)
    assert all(float(bent[k]) > 1e-6 for k in losses)
    # only the frames trained so far count: the bend at 0.5 is past a window up to 0.25
    assert float(model._control_regularisers(0.25)["control_rigidity"]) < 1e-10


def bases_model(bases: int = 3, controls: int = 24, frames: int = 5, **config) -> Splat4DModel:
    """A model whose controls move by ``bases`` motion bases over ``frames`` frames."""
    options = {"control_motion": "bases", "motion_bases": bases} | config
    return frames_model(controls, frames, **options)


def rigid_bases(model: Splat4DModel, q: Tensor, shift: Tensor, frame: int, bases=None) -> None:
    """Set the motion of ``bases`` (all by default) at ``frame`` to x -> R(q) x + shift."""
    field = model.deformation
    p = field.basis_pivots
    which = slice(None) if bases is None else bases
    with torch.no_grad():
        field.control_shifts[frame, which] = (p @ quat_to_rotmat(q).T + shift - p)[which]
        field.control_turns[frame, which] = q - torch.tensor([1.0, 0, 0, 0])


def test_motion_bases_start_at_the_controls_cluster_centres():
    model = bases_model(bases=4)
    field, controls = model.deformation, model.control_means
    assert field.basis_pivots.shape == (4, 3) and field.basis_logits.shape == (24, 4)
    # k-means of the dense solid splats: each pivot is the mean of those nearest to it
    solid = model._dense_means(4)
    label = torch.cdist(solid, field.basis_pivots).argmin(1)
    for b in range(4):
        torch.testing.assert_close(field.basis_pivots[b], solid[label == b].mean(0))
    # and each control weighs the nearest pivot's basis most
    nearest = torch.cdist(controls, field.basis_pivots).argmin(1)
    assert torch.equal(field.basis_logits.argmax(1), nearest)


def test_bases_are_placed_on_the_dense_splats_not_on_isolated_ones():
    model = bases_model(bases=2)
    g = torch.Generator().manual_seed(1)
    dense = 0.05 * torch.randn(190, 3, generator=g)
    far = 3.0 * torch.nn.functional.normalize(torch.randn(10, 3, generator=g), dim=-1)
    with torch.no_grad():
        model.splats["means"][:] = torch.cat([dense, far])
        model.splats["opacities"][:] = 5.0
    kept = model._dense_means(2)
    assert len(kept) < 190 + 10 and float(kept.norm(dim=-1).max()) < 1.0
    model._sample_controls()  # both pivots within the dense blob
    assert float(model.deformation.basis_pivots.norm(dim=-1).max()) < 0.2


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([[0.0, 0, 0], [5.0, 0, 0], [0.0, 5, 0]])
    points = (truth[:, None] + 0.1 * torch.randn(3, 50, 3, generator=g)).reshape(-1, 3)
    found = kmeans(points, 3)
    nearest = torch.cdist(found, truth).argmin(1)
    assert sorted(nearest.tolist()) == [0, 1, 2]
    torch.testing.assert_close(found, points.reshape(3, 50, 3).mean(1)[nearest])


def test_motion_bases_move_rigidly_and_blend_by_the_weights():
    model = bases_model()
    q, shift = axis_angle_quat([1.0, 0.0, 1.0], 35.0), torch.tensor([0.1, -0.2, 0.0])
    rigid_bases(model, q, shift, frame=3)  # every basis alike: the whole scene is rigid
    canonical = model.splats["means"].detach()
    moved = model.gaussians_at(0.75)
    torch.testing.assert_close(moved["means"].detach(), canonical @ quat_to_rotmat(q).T + shift)
    turned = quat_to_rotmat(moved["quats"].detach())
    torch.testing.assert_close(turned, quat_to_rotmat(q) @ quat_to_rotmat(model.splats["quats"]))
    # one basis slides alone: a control moves by its weight on it
    other = bases_model()
    rigid_bases(other, torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 0.0, 0.4]), 1, bases=0)
    controls = other.control_means
    shifts, turns = other.deformation.control_motion(torch.tensor([0.25]), controls)
    weight = torch.softmax(other.deformation.basis_logits, -1)[:, 0]
    torch.testing.assert_close(shifts[:, 2], 0.4 * weight)
    torch.testing.assert_close(shifts[:, :2], torch.zeros(24, 2))
    torch.testing.assert_close(turns, torch.zeros(24, 4))


def test_resampled_controls_keep_the_bases_motion():
    model = bases_model()
    q, shift = axis_angle_quat([0.0, 1.0, 0.0], 50.0), torch.tensor([0.2, 0.0, 0.1])
    rigid_bases(model, q, shift, frame=4, bases=1)
    with torch.no_grad():  # every control on basis 1 alone
        model.deformation.basis_logits[:] = torch.tensor([-30.0, 0.0, -30.0])
        model.splats["means"] += 0.05 * torch.randn(
            200, 3, generator=torch.Generator().manual_seed(3)
        )
    old = model.control_means.clone()
    model._sample_controls()
    assert not torch.equal(old, model.control_means)
    # the bases are placed afresh, each with the motion at its new pivot
    torch.testing.assert_close(model.deformation.basis_pivots, kmeans(model._dense_means(3), 3))
    canonical = model.splats["means"].detach()
    torch.testing.assert_close(
        model.gaussians_at(1.0)["means"].detach(), canonical @ quat_to_rotmat(q).T + shift
    )


def test_without_controls_yet_nothing_moves():
    model = Splat4DModel(Splat4DConfig(**TINY | {"control_points": 8}), SCENE)
    model.set_splats(random_splats(50))
    moved = model.gaussians_at(0.7)
    torch.testing.assert_close(moved["means"], model.splats["means"])


def time_cells(model: Splat4DModel) -> int:
    return model.deformation.grid.grids[3].shape[-2]  # the xt plane: [1, F, time, x]


def test_time_cells_scale_with_the_frames_and_come_back_from_the_run_config():
    config = {k: v for k, v in TINY.items() if k != "plane_time_resolution"}
    for frames, cells in ((60, 12), (200, 40), (4, 2), (0, 25)):
        scene = dataclasses.replace(SCENE, num_frames=frames)
        model = Splat4DModel(Splat4DConfig(**config), scene)
        assert time_cells(model) == cells and model.describe()["time_cells"] == cells
        restored = SceneMeta.from_dict(json.loads(json.dumps(scene.to_dict())))
        assert time_cells(Splat4DModel(Splat4DConfig(**config), restored)) == cells
    scene = dataclasses.replace(SCENE, num_frames=60)
    fixed = Splat4DModel(Splat4DConfig(**config | {"plane_time_resolution": 7}), scene)
    assert time_cells(fixed) == 7
    coarse = Splat4DModel(Splat4DConfig(**config | {"frames_per_time_cell": 10}), scene)
    assert time_cells(coarse) == 6
    # a run config written before frame counts were kept
    old = {k: v for k, v in SCENE.to_dict().items() if k != "num_frames"}
    assert SceneMeta.from_dict(old).num_frames == 0


def test_the_blur_reaches_the_rasterizer_and_old_runs_keep_theirs():
    # a Gaussian far smaller than a pixel renders as the blur alone: alpha at a pixel
    # centre 0.5 px off its mean in x and y is o * exp(-0.5 * 0.5 / eps2d)
    point = SplatData(
        means=torch.zeros(1, 3),
        quats=torch.tensor([[1.0, 0, 0, 0]]),
        scales=torch.full((1, 3), -12.0),
        opacities=torch.logit(torch.tensor([0.8])),
        sh0=torch.zeros(1, 1, 3),
        shN=torch.zeros(1, 3, 3),
    )
    c2w = look_at(torch.tensor([[0.0, -4.0, 0.0]]), torch.zeros(1, 3))
    camera = Cameras(c2w, torch.tensor([[[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]]]), 32, 32)
    for eps2d in (Splat4DConfig().eps2d, 0.3):
        model = Splat4DModel(Splat4DConfig(**TINY | {"eps2d": eps2d}), SCENE)
        model.set_splats(point)
        with torch.no_grad():
            _, alpha, _ = model.rasterize(model.gaussians_at(0.0), camera, sh_degree=1)
        expected = 0.8 * np.exp(-0.5 * 0.5 / eps2d)
        assert float(alpha[0, 15, 15, 0]) == pytest.approx(expected, rel=1e-4)
    assert Splat4DConfig().eps2d == 0.1
    # a run saved before the field existed was trained with gsplat's 0.3
    saved = config_to_dict(Splat4DConfig(**TINY))
    assert config_from_dict(Splat4DConfig, saved).eps2d == 0.1
    del saved["eps2d"]
    assert config_from_dict(Splat4DConfig, saved).eps2d == 0.3


def test_densification_stops_at_its_fraction_of_the_steps():
    for fraction, steps in ((0.3, 5000), (0.5, 1000)):
        model = Splat4DModel(Splat4DConfig(**TINY | {"refine_stop_fraction": fraction}), SCENE)
        model.set_splats(random_splats(50))
        model.max_steps = steps
        assert model.strategy().refine_stop_iter == int(fraction * steps)


def test_the_short_schedule_is_the_default_on_every_device():
    # on an H100, 20k steps overfitted the training frames (bundled scene, 24.0 against
    # 24.5 dB at 5k), so CUDA keeps the 5k schedule unless one asks for gsplat's
    config = Splat4DConfig()
    assert config.default_max_steps("cuda") == config.default_max_steps("cpu") == 5000
    assert config.resolve_schedule("cuda") == "cpu"
    assert Splat4DConfig(schedule="auto").default_max_steps("cuda") == 30_000


def test_window_focus_trains_on_the_newest_frames_while_the_window_widens():
    from snap3d.data import load

    data = load(ASSETS / "dynamic", "train", 8)
    times = data.times

    def drawn(focus: float, step: int) -> tuple[Tensor, float]:
        config = Splat4DConfig(**TINY | {"window_focus": focus, "static_fraction": 0.1,
                                         "time_window": 0.1, "window_fraction": 0.5})  # fmt: skip
        model = Splat4DModel(config, SCENE)
        model.max_steps = 1000
        generator = torch.Generator().manual_seed(0)
        picks = [model.train_batch(data, step, generator)["indices"][0] for _ in range(200)]
        return times[torch.stack(picks)], model.time_limit(step)

    # half-way through the widening the window holds the frames up to t = 0.55
    newest, limit = drawn(1.0, 350)
    assert limit == pytest.approx(0.55)
    assert newest.max() <= limit + 1e-6 and newest.min() >= limit - 0.1 - 1e-6
    uniform, _ = drawn(0.0, 350)
    assert uniform.max() <= limit + 1e-6 and uniform.min() < 0.2  # any frame of the window
    half, _ = drawn(0.5, 350)
    share = float((half >= limit - 0.1 - 1e-6).float().mean())
    assert 0.45 < share < 0.75  # half focused, plus the uniform draws that land there
    # after the widening (and during the warm-up) every allowed frame is drawn alike
    late, _ = drawn(1.0, 800)
    assert late.min() < 0.2 and late.max() > 0.9
    warm, warm_limit = drawn(1.0, 50)
    assert warm_limit == pytest.approx(0.1) and warm.max() <= 0.1 + 1e-6
    # frames sparser than the focus: the latest frame of the window
    model = Splat4DModel(Splat4DConfig(**TINY | {"window_focus": 1.0}), SCENE)
    model.max_steps = 1000
    sparse = data.times.clone()
    data.times[:] = torch.where(sparse < 0.5, 0.0, 1.0)  # two frame times, 0 and 1
    try:
        picks = {int(model.train_batch(data, 400, torch.Generator())["indices"][0])}
    finally:
        data.times[:] = sparse
    assert model.time_limit(400) < 1 and picks <= set(torch.nonzero(sparse < 0.5)[:, 0].tolist())


def test_config_fields_do_not_clash_with_the_trainer():
    ours = {f.name for f in dataclasses.fields(Splat4DConfig)}
    assert not ours & {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"static_fraction", "frame_code_dim", "rigidity_weight"} <= ours


# -- training ------------------------------------------------------------------------------


def bundled_trainer(config: Splat4DConfig, output: Path, steps: int) -> Trainer:
    """A set-up trainer on the bundled dynamic scene at 1/8 size (16 px)."""
    trainer = Trainer(
        "splat4d",
        config,
        TrainConfig(data=ASSETS / "dynamic", output=output, downscale=8, max_steps=steps,
                    device="cpu", progress=False, save_every=0),
    )  # fmt: skip
    trainer.setup()
    return trainer


def test_trains_on_the_bundled_dynamic_scene_with_densification(tmp_path):
    config = Splat4DConfig(
        **TINY | {"static_fraction": 0.5, "refine_every": 2, "refine_stop_fraction": 1.0}
    )
    trainer = bundled_trainer(config, tmp_path / "run", steps=8)
    model = trainer.model
    assert len(model.deformation.frame_times) == 60 and len(model.export_camtoworlds) == 20
    assert model.scene.num_frames == 60
    before = model.num_gaussians
    box = model.deformation.grid.bounds.clone()
    names = []
    for step in range(8):
        losses = trainer.train_step()
        assert all(np.isfinite(v) for v in losses.values())
        names.append(set(losses))
        if step == 3:  # the warm-up ended: the planes now span the canonical splats
            means = model.splats["means"].detach()
            solid = torch.sigmoid(model.splats["opacities"].detach()) > 0.1
            expected = HexPlane(box, (0.0, 1.0), feature_dim=1, resolution=2, time_resolution=2)
            expected.fit_bounds(means[solid] if int(solid.sum()) >= 100 else means)
            torch.testing.assert_close(model.deformation.grid.bounds, expected.bounds)
            assert not torch.equal(expected.bounds, box)
    assert "rigidity" not in names[3] and {"rigidity", "plane_tv", "time_l1", "offset"} <= names[4]
    assert model.num_gaussians != before  # the strategy densified/pruned canonical splats
    assert any(p.detach().abs().max() > 0 for p in model.deformation.heads.parameters())
    trainer.save()

    loaded, cfg, step = load_model(tmp_path / "run")
    cams = trainer.eval_data().cameras[[0, 5]]
    torch.testing.assert_close(loaded.render(cams).rgb, model.eval().render(cams).rgb)
    out = export_run(tmp_path / "run", "trajectory-video", camera=1, times=(0.0, 0.5, 1.0))
    video = PointTrajectoryVideo.load(out)
    assert video.xyz.shape == (3, 16, 16, 3) and video.times.tolist() == [0.0, 0.5, 1.0]
    torch.testing.assert_close(video.camtoworlds[0], loaded.export_camtoworlds[1])
    assert out.with_suffix(".mp4").is_file()


@pytest.mark.parametrize("motion", ["field", "frames", "bases"])
def test_control_points_train_and_come_back_from_the_checkpoint(tmp_path, motion):
    options = {"static_fraction": 0.5, "control_points": 16, "control_motion": motion}
    trainer = bundled_trainer(Splat4DConfig(**TINY | options), tmp_path / "run", steps=6)
    model = trainer.model
    for step in range(6):
        assert len(model.control_means) == (16 if step >= 3 else 0)
        trainer.train_step()
    field = model.deformation
    if motion == "field":
        assert any(p.detach().abs().max() > 0 for p in field.heads.parameters())
    else:  # the table moved; the planes and heads are not trained at all
        rows = 16 if motion == "frames" else Splat4DConfig().motion_bases
        assert field.control_shifts.shape == (len(field.frame_times), rows, 3)
        assert float(field.control_shifts.detach().abs().max()) > 0
        assert all(p.detach().abs().max() == 0 for p in field.heads.parameters())
    trainer.save()
    loaded, _, _ = load_model(tmp_path / "run")
    torch.testing.assert_close(loaded.control_means, model.control_means)
    torch.testing.assert_close(loaded.control_radii, model.control_radii)
    cams = trainer.eval_data().cameras[[3, 9]]
    torch.testing.assert_close(loaded.render(cams).rgb, model.eval().render(cams).rgb)


def test_checkpoints_from_before_control_points_still_load():
    model = Splat4DModel(Splat4DConfig(**TINY), SCENE)
    model.set_splats(random_splats(40))
    model.deformation.set_frames(torch.linspace(0, 1, 3))
    old = ("control_", "deformation.control_")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(old)}
    loaded = Splat4DModel(Splat4DConfig(**TINY), SCENE)
    loaded.load_checkpoint_state(state)
    assert loaded.control_means.shape == (0, 3)
    torch.testing.assert_close(loaded.gaussians_at(0.5)["means"], model.gaussians_at(0.5)["means"])


def write_multiview_video(root: Path, views: int = 2, frames: int = 3, size: int = 8) -> Path:
    """A nerfstudio scene: ``views`` cameras each filming ``frames`` times of a square
    sliding across a grey background."""
    (root / "images").mkdir(parents=True)
    entries = []
    for f in range(frames):
        for v in range(views):
            img = np.full((size, size, 3), 128, np.uint8)
            img[2:5, f : f + 3] = (220, 40, 40)
            name = f"images/v{v}_f{f}.png"
            Image.fromarray(img).save(root / name)
            eye = np.array([0.3 * v, 0.0, 3.0])  # OpenGL: looking down -z at the origin
            c2w = np.eye(4)
            c2w[:3, 3] = eye
            entries.append({"file_path": name, "transform_matrix": c2w.tolist(), "time": f})
    meta = {"fl_x": 10.0, "fl_y": 10.0, "cx": size / 2, "cy": size / 2, "w": size, "h": size,
            "frames": entries}  # fmt: skip
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def test_trains_on_multiview_video_in_the_nerfstudio_layout(tmp_path):
    data = write_multiview_video(tmp_path / "scene")
    trainer = Trainer(
        "splat4d",
        Splat4DConfig(**TINY | {"static_fraction": 0.25}),
        TrainConfig(data=data, output=tmp_path / "run", max_steps=4, device="cpu",
                    progress=False, save_every=0),
    )  # fmt: skip
    trainer.setup()
    assert trainer.train_data.times is not None
    assert trainer.model.deformation.frame_times.tolist() == [0.0, 0.5, 1.0]
    trainer.train()
    result = trainer.run_eval()
    assert result is not None and np.isfinite(result["psnr"])


def test_registered():
    from snap3d.train import get_method

    spec = get_method("splat4d")
    assert spec.model_cls is Splat4DModel and spec.config_cls is Splat4DConfig
