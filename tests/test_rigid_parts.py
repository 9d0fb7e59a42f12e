"""Rigid parts (splat4d's ``rigid_parts``): segmentation of trajectories into rigid bodies,
part motions against analytic rotations, tracking a known motion from rendered frames,
and the stage inside a splat4d run (checkpoint round trip, interruption)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from snap3d.cameras import quat_multiply, quat_to_rotmat
from snap3d.io.splats import SH_C0
from snap3d.render._sh import eval_sh
from snap3d.representations.rigid_parts import (
    axis_angle_quat,
    fit_rigid,
    flat_light,
    motion_roughness,
    move_parts,
    parts_at,
    quat_axis_angle,
    reassign_parts,
    segment_parts,
    shade_parts,
    shading_factors,
    shortest_axes,
    total_steps,
    track_and_map,
    turn_rates,
)
from snap3d.representations.splat4d import Splat4DConfig, Splat4DModel
from snap3d.train import TrainConfig, Trainer, load_model
from tests.test_splat4d import SCENE, TINY, orbit_cameras, random_splats

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rot_z(angle: float) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_axis_angle_quat_matches_the_rotation_and_is_smooth_at_zero():
    w = torch.tensor([[0.0, 0.0, 0.7], [0.3, -0.2, 0.5], [0.0, 0.0, 0.0]], requires_grad=True)
    q = axis_angle_quat(w)
    torch.testing.assert_close(quat_to_rotmat(q[0:1])[0], rot_z(0.7))
    # about a general axis: the rotation fixes the axis and turns by |w|
    R = quat_to_rotmat(q[1:2].detach())[0]
    axis = w[1].detach() / w[1].detach().norm()
    torch.testing.assert_close(R @ axis, axis)
    angle = math.acos((float(torch.trace(R)) - 1) / 2)
    assert angle == pytest.approx(float(w[1].detach().norm()), abs=1e-5)
    torch.testing.assert_close(q[2].detach(), torch.tensor([1.0, 0, 0, 0]))
    q.sum().backward()
    assert torch.isfinite(w.grad).all()
    torch.testing.assert_close(w.grad[2], torch.full((3,), 0.5))  # d(sin(|w|/2) w/|w|)/dw


def test_quat_axis_angle_inverts_axis_angle_quat_both_ways_round():
    w = torch.tensor([[0.0, 0, 0], [1e-8, 0, 0], [0.3, -0.2, 0.5], [0, 0, 3.0], [-2, 1, 0.5]])
    q = axis_angle_quat(w)
    torch.testing.assert_close(quat_axis_angle(q), w)
    torch.testing.assert_close(quat_axis_angle(-q), w)  # q and -q: the same rotation
    w.requires_grad_(True)
    quat_axis_angle(axis_angle_quat(w)).sum().backward()
    torch.testing.assert_close(w.grad, torch.ones_like(w))  # finite at zero too


def test_turn_rates_are_per_mean_interval_and_motion_roughness_sees_only_changes():
    times = torch.tensor([0.0, 0.1, 0.3, 0.4, 0.6])  # uneven frames
    steps = (times[1:] - times[:-1]) / (times[1:] - times[:-1]).mean()
    spin = torch.tensor([0.1, -0.2, 0.3])  # a steady spin: radians per unit time
    turns = times[:, None, None] * torch.stack([torch.zeros(3), spin])  # [F,2,3]
    quats = axis_angle_quat(turns)
    rates = turn_rates(quats, steps)  # [F-1,2,3]
    mean_gap = float((times[1:] - times[:-1]).mean())
    torch.testing.assert_close(rates[:, 1], (spin * mean_gap).expand(4, 3))
    torch.testing.assert_close(rates[:, 0], torch.zeros(4, 3))
    shifts = times[:, None, None] * torch.tensor([[0.0, 0, 0], [0.5, 0.0, -0.2]])
    assert float(motion_roughness(quats, shifts, steps, 1.0)) < 1e-10  # steady: smooth
    # a jerk of 0.01 at one frame: its velocity changes by 0.01 / step on either side
    jerked = shifts.clone()
    jerked[2, 1, 0] += 0.01
    v_change = 0.01 * torch.tensor([1 / steps[1], 1 / steps[1] + 1 / steps[2], 1 / steps[2]])
    expected = float((v_change**2).mean())
    assert float(motion_roughness(quats, jerked, steps, 1.0)) == pytest.approx(expected, rel=1e-4)
    # lengths count in length_unit; the static part 0 is left out
    assert float(motion_roughness(quats, jerked, steps, 2.0)) == pytest.approx(
        expected / 4, rel=1e-4
    )
    shaken = shifts.clone()
    shaken[2, 0] += 1.0
    assert float(motion_roughness(quats, shaken, steps, 1.0)) < 1e-10


def test_move_parts_turns_each_part_about_its_centre():
    g = random_splats(6)
    gaussians = {"means": g.means, "quats": g.quats, "scales": g.scales}
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centers = torch.tensor([[9.0, 9, 9], [0.2, 0.1, 0.0], [-0.3, 0.0, 0.1]])
    quats = axis_angle_quat(torch.tensor([[0.0, 0, 0], [0, 0, math.pi / 2], [0, 0, -0.4]]))
    shifts = torch.tensor([[0.0, 0, 0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.2]])
    moved = move_parts(gaussians, labels, centers, quats, shifts)
    for i in range(6):
        k = int(labels[i])
        R = quat_to_rotmat(quats[k : k + 1])[0]
        expected = R @ (g.means[i] - centers[k]) + centers[k] + shifts[k]
        torch.testing.assert_close(moved["means"][i], expected)
        torch.testing.assert_close(moved["quats"][i], quat_multiply(quats[k], g.quats[i]))
    torch.testing.assert_close(moved["means"][:2], g.means[:2])  # part 0: the identity
    assert moved["scales"] is g.scales


def test_parts_at_blends_between_frames():
    frames = torch.tensor([0.0, 0.5, 1.0])
    quats = axis_angle_quat(torch.tensor([[[0.0, 0, 0]], [[0, 0, 0.8]], [[0, 0, 1.2]]]))
    shifts = torch.tensor([[[0.0, 0, 0]], [[0.2, 0, 0]], [[0.2, 0.4, 0]]])
    q, s = parts_at(frames, quats, shifts, 0.25)
    torch.testing.assert_close(quat_to_rotmat(q)[0], rot_z(0.4))  # half way: half the turn
    torch.testing.assert_close(s[0], torch.tensor([0.1, 0.0, 0.0]))
    q, s = parts_at(frames, quats, shifts, 0.5)
    torch.testing.assert_close(q, quats[1])
    q, s = parts_at(frames, quats, shifts, 2.0)  # clamped to the last frame
    torch.testing.assert_close(s, shifts[2])


def test_segment_parts_finds_the_rigid_bodies_and_the_static_points():
    g = torch.Generator().manual_seed(0)
    F = 12
    static = torch.rand(40, 3, generator=g)
    spinner = torch.rand(50, 3, generator=g) * 0.4 + torch.tensor([1.0, 0.0, 0.0])
    slider = torch.rand(50, 3, generator=g) * 0.4 + torch.tensor([-1.0, 0.0, 0.0])
    paths = []
    for f in range(F):
        a = 0.25 * f
        c = spinner.mean(0)
        spun = (spinner - c) @ rot_z(a).T + c + torch.tensor([0.0, 0.0, 0.03 * f])
        slid = (slider - slider.mean(0)) @ rot_z(-0.1 * f).T + slider.mean(0)
        slid = slid + torch.tensor([0.0, 0.05 * f, 0.0])
        paths.append(torch.cat([static + 0.001 * f, spun, slid]))
    paths = torch.stack(paths, 1)  # [140,F,3]
    solid = torch.ones(140, dtype=torch.bool)
    solid[45] = False  # a transparent spinner splat takes its nearest trajectory's part
    labels = segment_parts(paths, solid, 2, static_motion=0.05, rigidity_scale=0.02)
    assert (labels[:40] == 0).all()
    assert len(set(labels[40:90].tolist())) == 1 and len(set(labels[90:].tolist())) == 1
    assert {int(labels[40]), int(labels[90])} == {1, 2}
    # a sample smaller than the movers still labels every one of them
    sampled = segment_parts(paths, solid, 2, 0.05, 0.02, sample=30, generator=g)
    assert (sampled[:40] == 0).all() and (sampled[40:] > 0).all()
    assert len(set(sampled[40:90].tolist())) == 1 and len(set(sampled[90:].tolist())) == 1
    # nothing moves: all static
    assert (segment_parts(paths[:40], solid[:40], 2, 0.05, 0.02) == 0).all()


def test_fit_rigid_recovers_known_motions_and_ignores_weighted_out_points():
    g = torch.Generator().manual_seed(0)
    source = torch.rand(30, 3, generator=g)
    R = torch.stack(
        [rot_z(0.3), quat_to_rotmat(axis_angle_quat(torch.tensor([[0.4, -1, 0.2]])))[0]]
    )
    t = torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0.0, 0.2]])
    targets = torch.einsum("fij,mj->fmi", R, source) + t[:, None]
    targets[:, 0] += 5.0  # an outlier, weighted out
    weights = torch.ones(30)
    weights[0] = 0.0
    R_fit, t_fit = fit_rigid(source, targets, weights)
    torch.testing.assert_close(R_fit, R, atol=1e-5, rtol=0)
    torch.testing.assert_close(t_fit, t, atol=1e-5, rtol=0)
    assert torch.linalg.det(R_fit).gt(0).all()  # rotations, not reflections


def test_reassign_parts_frees_ground_dragged_along_with_a_swinging_arm():
    """A field drags a strip of the ground (static) partly along with an arm swinging up
    about a hinge, and clustering put the strip in the arm; held to the arm's rigid
    motion it strays more than held still, so it goes back to the static part."""
    g = torch.Generator().manual_seed(0)
    F = 10
    ground = torch.rand(60, 3, generator=g) * torch.tensor([2.0, 2.0, 0.0]) - 1
    arm = torch.rand(40, 3, generator=g) * torch.tensor([0.8, 0.1, 0.1])  # hinge at 0
    strip = torch.rand(15, 3, generator=g) * torch.tensor([0.4, 0.1, 0.0]) - 0.02
    paths = []
    for f in range(F):
        lift = math.radians(60) * f / (F - 1)
        c, s_ = math.cos(lift), math.sin(lift)
        R = torch.tensor([[c, 0.0, -s_], [0.0, 1.0, 0.0], [s_, 0.0, c]])
        swung = arm @ R.T
        dragged = strip + 0.3 * (strip @ R.T - strip)  # moved a third of the way
        paths.append(torch.cat([ground, swung, dragged]))
    paths = torch.stack(paths, 1)
    solid = torch.ones(115, dtype=torch.bool)
    labels = torch.zeros(115, dtype=torch.long)
    labels[60:] = 1  # the clustering's mistake: the strip joined the arm
    fixed = reassign_parts(paths, solid, labels)
    assert (fixed[:60] == 0).all() and (fixed[60:100] == 1).all()
    assert (fixed[100:] == 0).all()
    assert (reassign_parts(paths, solid, labels, iterations=0) == labels).all()


def scene_with_a_moving_part(frames: int):
    """A static cloud (part 0) and a compact part 1 turning 12 deg and sliding 4 cm a
    frame; one camera per frame. Returns what ``track_and_map`` needs plus the truth."""
    model = Splat4DModel(Splat4DConfig(**TINY), SCENE)
    splats = random_splats(160, seed=3)
    splats.means[:80] *= 1.6  # the static cloud around
    splats.means[80:] = splats.means[80:] * 0.5 + torch.tensor([0.2, 0.1, 0.1])
    splats.opacities[:] = 2.0
    splats.sh0[80:] = torch.randn(80, 1, 3, generator=torch.Generator().manual_seed(1))
    model.set_splats(splats)
    canonical = {k: v.detach().clone() for k, v in model.splats.items()}
    labels = torch.zeros(160, dtype=torch.long)
    labels[80:] = 1
    centers = torch.stack([torch.zeros(3), canonical["means"][80:].mean(0)])
    turns = torch.stack([torch.tensor([[0.0, 0, 0], [0, 0, math.radians(12) * f]])
                         for f in range(frames)])  # fmt: skip
    true_quats = axis_angle_quat(turns)
    true_shifts = torch.zeros(frames, 2, 3)
    true_shifts[:, 1, 0] = 0.04 * torch.arange(frames)
    cameras = orbit_cameras(frames, size=32)
    images = []
    with torch.no_grad():
        for f in range(frames):
            g = move_parts(canonical, labels, centers, true_quats[f], true_shifts[f])
            images.append(model.rasterize(g, cameras[[f]], sh_degree=1)[0][0, ..., :3])

    def render_loss(gaussians, index):
        out = model.rasterize(gaussians, cameras[[index]], sh_degree=1, render_mode="RGB")[0]
        return (out[0, ..., :3] - images[index]).abs().mean()

    return canonical, labels, centers, render_loss, true_quats, true_shifts


def test_tracking_recovers_a_known_rigid_motion_frame_by_frame():
    frames = 5
    canonical, labels, centers, render_loss, true_q, true_s = scene_with_a_moving_part(frames)
    rates = {"turn": 0.02, "shift": 0.006, "refine_turn": 0.002, "refine_shift": 0.0006}
    calls = []
    fitted, quats, shifts, _, _ = track_and_map(
        canonical, labels, centers, [torch.tensor([f]) for f in range(frames)], render_loss,
        rates, track_steps=60, map_steps=0, refine_steps=0,
        generator=torch.Generator().manual_seed(0), progress=calls.append,
    )  # fmt: skip
    assert calls[-1] == total_steps(frames, 60, 0, 0) == 4 * 60
    for k, v in fitted.items():  # nothing mapped (no rates): the splats are as given
        torch.testing.assert_close(v, canonical[k])
    torch.testing.assert_close(quats[:, 0], true_q[:, 0])  # the static part never moves
    torch.testing.assert_close(shifts[:, 0], torch.zeros(frames, 3))
    # the moving part: within a degree and a few millimetres of the truth at every frame
    dot = (quats[:, 1] * true_q[:, 1]).sum(-1).abs().clamp(max=1)
    degrees = torch.rad2deg(2 * torch.acos(dot))
    assert float(degrees.max()) < 1.0, degrees
    assert float((shifts[:, 1] - true_s[:, 1]).norm(dim=-1).max()) < 0.005


def test_the_turn_prior_carries_a_steady_spin_through_a_frame_that_does_not_show_it():
    """Frame 3 does not show the moving part (as if hidden): tracked from the last pose,
    it stays 12 deg behind; with the turn prior it carries the last turn rate on."""
    frames = 5
    canonical, labels, centers, render_loss, true_q, true_s = scene_with_a_moving_part(frames)
    rates = {"turn": 0.02, "shift": 0.006, "refine_turn": 0.002, "refine_shift": 0.0006}
    views = [torch.tensor([f]) for f in range(frames)]

    def hidden_at_3(gaussians, index):
        if index == 3:
            gaussians = {k: v[labels == 0] for k, v in gaussians.items()}
        return render_loss(gaussians, index)

    def degrees_off(turn_prior):
        _, quats, *_ = track_and_map(
            canonical, labels, centers, views, hidden_at_3, rates, track_steps=60,
            map_steps=0, refine_steps=0, generator=torch.Generator().manual_seed(0),
            turn_prior=turn_prior,
        )  # fmt: skip
        dot = (quats[:, 1] * true_q[:, 1]).sum(-1).abs().clamp(max=1)
        return torch.rad2deg(2 * torch.acos(dot))

    held, carried = degrees_off(0.0), degrees_off(1.0)
    assert float(held[3]) == pytest.approx(12.0, abs=1.5), held
    assert float(carried[:4].max()) < 1.5, carried
    assert float(carried[4]) < 1.5, carried  # and the next frame is tracked from there


def test_mapping_and_refinement_fit_the_splats_and_the_motions_together():
    """Canonical colours wrong and motions tracked with too few steps: mapping and the
    joint refinement bring the renders close to the frames."""
    frames = 4
    canonical, labels, centers, render_loss, true_q, true_s = scene_with_a_moving_part(frames)
    wrong = dict(canonical)
    wrong["sh0"] = canonical["sh0"] + 0.3
    views = [torch.tensor([f]) for f in range(frames)]
    rates = {"turn": 0.02, "shift": 0.006, "refine_turn": 0.002, "refine_shift": 0.0006,
             "sh0": 0.03, "opacities": 0.05}  # fmt: skip

    def mean_loss(gaussians, quats, shifts):
        with torch.no_grad():
            return (
                sum(
                    float(
                        render_loss(move_parts(gaussians, labels, centers, quats[f], shifts[f]), f)
                    )
                    for f in range(frames)
                )
                / frames
            )

    identity = torch.tensor([1.0, 0, 0, 0]).expand(frames, 2, 4)
    before = mean_loss(wrong, identity, torch.zeros(frames, 2, 3))
    fitted, quats, shifts, _, _ = track_and_map(
        wrong, labels, centers, views, render_loss, rates, track_steps=40, map_steps=30,
        refine_steps=100, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(wrong["sh0"], canonical["sh0"] + 0.3)  # inputs untouched
    after = mean_loss(fitted, quats, shifts)
    assert after < 0.3 * before, (before, after)
    assert float((fitted["sh0"] - canonical["sh0"]).abs().mean()) < 0.15
    torch.testing.assert_close(fitted["means"], canonical["means"])  # no rate: not fitted


def bundled_parts_trainer(tmp_path: Path, **options) -> Trainer:
    config = Splat4DConfig(
        **TINY | {"static_fraction": 0.5, "rigid_parts": 2, "part_track_steps": 2,
                  "part_map_steps": 2, "part_refine_steps": 3} | options
    )  # fmt: skip
    trainer = Trainer(
        "splat4d",
        config,
        TrainConfig(data=ASSETS / "dynamic", output=tmp_path / "run", downscale=8,
                    max_steps=4, device="cpu", progress=False, save_every=0),
    )  # fmt: skip
    trainer.setup()
    return trainer


def test_rigid_parts_run_after_the_field_and_come_back_from_the_checkpoint(tmp_path):
    trainer = bundled_parts_trainer(tmp_path)
    model = trainer.model
    trainer.train()
    assert model.has_parts
    F = len(model.deformation.frame_times)
    assert model.part_labels.shape == (model.num_gaussians,)
    assert model.part_quats.shape == (F, 3, 4) and model.part_shifts.shape == (F, 3, 3)
    torch.testing.assert_close(model.part_quats[:, 0], torch.tensor([1.0, 0, 0, 0]).expand(F, 4))
    # the splats are the scene at the first frame, where the parts are at the identity
    torch.testing.assert_close(model.gaussians_at(0.0)["means"], model.splats["means"])
    # shaded (part_shading, the default): a light and a normal per splat
    assert model.part_light.shape == (9, 3)
    assert model.part_normals.shape == (model.num_gaussians, 3)
    loaded, _, _ = load_model(tmp_path / "run")
    assert loaded.has_parts
    torch.testing.assert_close(loaded.part_labels, model.part_labels)
    torch.testing.assert_close(loaded.part_light, model.part_light)
    cams = trainer.eval_data().cameras[[2, 11]]
    both = model.eval().render(cams).rgb
    torch.testing.assert_close(loaded.render(cams).rgb, both)
    # each camera is lit as it sees the splats, alone or with another
    torch.testing.assert_close(model.render(cams[[1]]).rgb[0], both[1])
    for t in (0.3, 0.77):
        torch.testing.assert_close(loaded.gaussians_at(t)["means"], model.gaussians_at(t)["means"])


def test_an_interrupted_parts_stage_leaves_the_field_run_to_resume(tmp_path, monkeypatch):
    trainer = bundled_parts_trainer(tmp_path)
    model = trainer.model
    import snap3d.representations.splat4d as splat4d

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(splat4d, "track_and_map", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert trainer.step == 4 and not model.has_parts
    means = model.splats["means"].detach().clone()
    monkeypatch.undo()
    resumed = Trainer(
        "splat4d",
        Splat4DConfig(),
        TrainConfig(output=tmp_path / "run", max_steps=4, device="cpu", progress=False,
                    save_every=0, resume=True),
    )  # fmt: skip
    resumed.setup()
    torch.testing.assert_close(resumed.model.splats["means"], means)
    resumed.train()
    assert resumed.model.has_parts


def test_trajectory_export_carries_each_pixel_rigidly_with_its_part():
    model = Splat4DModel(Splat4DConfig(**TINY), SCENE)
    splats = random_splats(300, seed=5)
    splats.opacities[:] = 4.0
    model.set_splats(splats)
    frames = torch.tensor([0.0, 0.5, 1.0])
    model.deformation.set_frames(frames)
    model.part_labels = (splats.means[:, 0] > 0).long()  # half the cloud moves
    model.part_centers = torch.tensor([[0.0, 0, 0], [0.25, 0.0, 0.0]])
    turns = torch.zeros(3, 2, 3)
    turns[:, 1, 2] = torch.tensor([0.0, 0.3, 0.6])
    model.part_quats = axis_angle_quat(turns)
    model.part_shifts = torch.zeros(3, 2, 3)
    model.part_shifts[:, 1, 1] = torch.tensor([0.0, 0.1, 0.2])
    assert model.has_parts
    times = torch.tensor([0.0, 0.25, 1.0])
    video = model.trajectory_video(orbit_cameras(1, size=16), times)
    tracked = video.xyz[0].norm(dim=-1) > 0
    assert tracked.sum() > 50
    start = video.xyz[0][tracked]
    moved = (video.xyz[2][tracked] - start).norm(dim=-1) > 1e-4
    assert moved.any() and (~moved).any()  # pixels of both parts
    c = model.part_centers[1]
    for k, turn in ((1, 0.15), (2, 0.6)):  # t = 0.25 lies half way to the 0.3 rad frame
        shift = torch.tensor([0.0, 0.1 * turn / 0.3, 0.0])
        expected = (start - c) @ rot_z(turn).T + c + shift
        got = video.xyz[k][tracked]
        torch.testing.assert_close(got[moved], expected[moved], atol=1e-4, rtol=0)
        torch.testing.assert_close(got[~moved], start[~moved])


def test_rigid_parts_train_on_multiview_video(tmp_path):
    """Several views per frame (nerfstudio layout with a per-frame time): each tracking
    and mapping step draws one of the frame's views. Unshaded (``part_shading`` off)."""
    from tests.test_splat4d import write_multiview_video

    data = write_multiview_video(tmp_path / "scene", views=2, frames=3)
    config = Splat4DConfig(
        **TINY | {"static_fraction": 0.25, "rigid_parts": 1, "part_track_steps": 2,
                  "part_map_steps": 2, "part_refine_steps": 2, "part_shading": False}
    )  # fmt: skip
    trainer = Trainer(
        "splat4d",
        config,
        TrainConfig(data=data, output=tmp_path / "run", max_steps=4, device="cpu",
                    progress=False, save_every=0),
    )  # fmt: skip
    trainer.setup()
    trainer.train()
    model = trainer.model
    assert model.has_parts and model.part_quats.shape == (3, 2, 4)
    assert torch.isfinite(model.part_shifts).all()
    assert model.part_light.numel() == 0  # unshaded: the colours never change
    result = trainer.run_eval()
    assert result is not None and math.isfinite(result["psnr"])


def test_rigid_parts_need_a_video(tmp_path):
    from snap3d.errors import Snap3dError

    model = Splat4DModel(Splat4DConfig(**TINY | {"rigid_parts": 2}), SCENE)
    model.set_splats(random_splats(50))
    model.deformation.set_frames(torch.zeros(1))

    class Still:
        times = None
        root = tmp_path

    with pytest.raises(Snap3dError, match="needs a video"):
        model.finish_training(Still())


def lambert_light(direction, ambient: float) -> Tensor:
    """SH irradiance [9,3] equal to ambient + (1 - ambient) (n . l), unclamped (bands 0
    and 1 only; the 3DGS basis has Y_1 = c (-y, z, -x))."""
    x, y, z = (
        torch.tensor(direction, dtype=torch.float32) / torch.tensor(direction).norm()
    ).tolist()
    light = torch.zeros(9, 3)
    light[0] = ambient / SH_C0
    c1 = 0.4886025119029199
    light[1:4] = (1 - ambient) / c1 * torch.tensor([-y, z, -x])[:, None]
    return light


def test_shading_factors_follow_a_turned_normal_under_a_known_light():
    light = lambert_light([0.0, 1.0, 0.0], 0.6)  # E(n) = 0.6 + 0.4 n_y
    normals = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, -2.0, 0], [0.6, 0.8, 0]])
    labels = torch.tensor([0, 1, 1, 1])
    quats = torch.stack(
        [torch.tensor([1.0, 0, 0, 0]), axis_angle_quat(torch.tensor([0, 0, math.pi / 2]))]
    )
    toward = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [-0.8, 0.6, 0]])
    f = shading_factors(normals, labels, quats, light, toward)[:, 0]
    assert float(f[0]) == pytest.approx(1.0)  # the static part never changes
    # +x turned a quarter about z faces +y, towards the light: 0.6 + 0.4 from 0.6
    assert float(f[1]) == pytest.approx(1.0 / 0.6, rel=1e-5)
    # -y (length 2) turns to +x, but the side seen is its back (-x): 0.6 against 1.0
    assert float(f[2]) == pytest.approx(0.6 / 1.0, rel=1e-5)
    # (0.6, 0.8) turns to (-0.8, 0.6): 0.84 from 0.92
    assert float(f[3]) == pytest.approx(0.84 / 0.92, rel=1e-5)
    torch.testing.assert_close(
        shading_factors(normals, labels, quats, flat_light(), toward), torch.ones(4, 3)
    )


def test_shade_parts_scales_the_colour_from_every_view_direction():
    g = torch.Generator().manual_seed(0)
    n = 6
    moved = {"means": torch.randn(n, 3, generator=g), "sh0": torch.randn(n, 1, 3, generator=g),
             "shN": 0.3 * torch.randn(n, 8, 3, generator=g)}  # fmt: skip
    normals = torch.randn(n, 3, generator=g)
    labels = torch.tensor([0, 1, 1, 1, 2, 2])
    quats = axis_angle_quat(torch.tensor([[0.0, 0, 0], [0.3, -0.5, 0.2], [0, 1.2, 0]]))
    light = lambert_light([0.4, -0.3, 0.87], 0.5)
    eye = torch.tensor([0.0, 0.0, 5.0])
    centers, shifts = torch.zeros(3, 3), torch.zeros(3, 3)
    out = shade_parts(moved, normals, labels, quats, light, eye, centers, shifts)
    f = shading_factors(normals, labels, quats, light, eye - moved["means"])
    assert float((f - 1).abs().max()) > 0.05  # the check below means something
    dirs = torch.randn(n, 3, generator=g)
    colour = lambda sh: eval_sh(2, dirs, torch.cat([sh["sh0"], sh["shN"]], 1)) + 0.5  # noqa: E731
    torch.testing.assert_close(colour(out), f * colour(moved))
    torch.testing.assert_close(out["means"], moved["means"])


def test_shortest_axes_are_the_flat_direction():
    quats = torch.stack(
        [torch.tensor([1.0, 0, 0, 0]), axis_angle_quat(torch.tensor([0, 0, math.pi / 2]))]
    )
    scales = torch.log(torch.tensor([[1.0, 0.01, 1.0], [1.0, 0.01, 1.0]]))
    axes = shortest_axes(2 * quats, scales)  # raw quaternions need not be unit
    torch.testing.assert_close(axes[0], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(axes[1], torch.tensor([-1.0, 0.0, 0.0]))


def test_tracking_with_shading_learns_the_light_that_brightens_a_turning_part():
    """The frames are lit by a light from the side: as the part turns, its colours change.
    Without shading, the splats cannot follow; with it, the fitted light does."""
    frames = 5
    canonical, labels, centers, _, true_q, true_s = scene_with_a_moving_part(frames)
    model = Splat4DModel(Splat4DConfig(**TINY), SCENE)
    cameras = orbit_cameras(frames, size=32)
    canonical["scales"][80:, 2] -= 2.0  # flat splats: normals along z (then turned)
    canonical["quats"][80:] = axis_angle_quat(
        torch.randn(80, 3, generator=torch.Generator().manual_seed(4))
    )
    normals = shortest_axes(canonical["quats"], canonical["scales"])
    light = lambert_light([1.0, 0.0, 0.3], 0.4)
    images = []
    with torch.no_grad():
        for f in range(frames):
            g = move_parts(canonical, labels, centers, true_q[f], true_s[f])
            g = shade_parts(
                g, normals, labels, true_q[f], light, cameras.centers[f], centers, true_s[f]
            )
            images.append(model.rasterize(g, cameras[[f]], sh_degree=1)[0][0, ..., :3])

    def render_loss(gaussians, index):
        out = model.rasterize(gaussians, cameras[[index]], sh_degree=1, render_mode="RGB")[0]
        return (out[0, ..., :3] - images[index]).abs().mean()

    views = [torch.tensor([f]) for f in range(frames)]
    rates = {"turn": 0.02, "shift": 0.006, "refine_turn": 0.002, "refine_shift": 0.0006,
             "light": 0.05, "sh0": 0.003}  # fmt: skip

    def fit(shading: bool):
        result = track_and_map(
            canonical, labels, centers, views, render_loss, rates, track_steps=40,
            map_steps=40, refine_steps=100, generator=torch.Generator().manual_seed(0),
            shading=shading, viewpoints=cameras.centers,
        )  # fmt: skip
        with torch.no_grad():
            loss = 0.0
            for f in range(frames):
                g = move_parts(result.gaussians, labels, centers, result.quats[f], result.shifts[f])
                if shading:
                    g = shade_parts(g, result.normals, labels, result.quats[f], result.light,
                                    cameras.centers[f], centers, result.shifts[f])  # fmt: skip
                loss += float(render_loss(g, f)) / frames
        return result, loss

    plain, plain_loss = fit(False)
    assert plain.light is None and plain.normals is None
    lit, lit_loss = fit(True)
    assert lit_loss < 0.7 * plain_loss, (lit_loss, plain_loss)
    # the fitted light brightens and darkens the turned part as the true one does
    moving = labels == 1
    toward = cameras.centers[-1] - canonical["means"]
    true_f = shading_factors(normals, labels, true_q[-1], light, toward)[moving, 0]
    fit_f = shading_factors(lit.normals, labels, lit.quats[-1], lit.light, toward)[moving, 0]
    assert float(true_f.std()) > 0.1
    # (measured: 0.12 against 0.39 for a flat light; correlation 0.80)
    assert float((fit_f - true_f).abs().mean()) < 0.5 * float((true_f - 1).abs().mean())
    assert float(torch.corrcoef(torch.stack([true_f, fit_f]))[0, 1]) > 0.6
