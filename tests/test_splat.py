"""The `splat` method: training, densification, checkpoints, export and rendering."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from snap3d.cameras import Cameras, look_at
from snap3d.io import SplatData, load_splats, save_splats
from snap3d.representations.base import SceneMeta
from snap3d.representations.splat import SplatConfig, SplatModel, splat_model_from_file
from snap3d.representations.strategies import covariances_torch, relocation_torch
from snap3d.train import TrainConfig, Trainer, load_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def tiny_scene(tmp_path: Path) -> Path:
    """The bundled 360 object at 32 px, 12 train and 3 test views (fast to train)."""
    from PIL import Image

    src = ASSETS / "object360"
    dst = tmp_path / "tiny360"
    for split, count in (("train", 12), ("test", 3), ("val", 3)):
        meta = json.loads((src / f"transforms_{split}.json").read_text())
        meta["frames"] = meta["frames"][:count]
        (dst / split).mkdir(parents=True, exist_ok=True)
        for f in meta["frames"]:
            name = f["file_path"].lstrip("./")
            Image.open(src / f"{name}.png").resize((32, 32), Image.Resampling.BOX).save(
                dst / f"{name}.png"
            )
        (dst / f"transforms_{split}.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return tiny_scene(tmp_path_factory.mktemp("splat"))


def train(scene: Path, out: Path, steps: int, **model_kwargs) -> Trainer:
    cfg = TrainConfig(
        data=scene, output=out, max_steps=steps, progress=False, device="cpu", save_every=0
    )
    model_cfg = SplatConfig(init_num_points=2000, sh_degree=1, **model_kwargs)
    trainer = Trainer("splat", model_cfg, cfg)
    trainer.train()
    return trainer


def test_training_lowers_error_and_densifies(scene, tmp_path):
    trainer = Trainer(
        "splat",
        SplatConfig(init_num_points=2000, sh_degree=1),
        TrainConfig(
            data=scene, output=tmp_path / "run", max_steps=400, progress=False, device="cpu"
        ),
    )
    trainer.setup()
    before = trainer.run_eval()["psnr"]
    n0 = trainer.model.num_gaussians
    trainer.train()
    after = trainer.run_eval()["psnr"]
    assert after > before + 5, (before, after)
    # the CPU schedule scaled to 400 steps refines from step 20 to 280: the count changed
    assert trainer.model.num_gaussians != n0
    opt = trainer.optimizers["means"]
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert state["exp_avg"].shape == trainer.model.splats["means"].shape


def test_checkpoint_round_trip_resizes_and_renders_identically(scene, tmp_path):
    trainer = train(scene, tmp_path / "run", 60)
    model, cfg, step = load_model(tmp_path / "run")
    assert step == 60 and model.num_gaussians == trainer.model.num_gaussians
    cam = trainer.train_data.cameras[0]
    with torch.no_grad():
        a = trainer.model.eval().render(cam).rgb
        b = model.render(cam).rgb
    assert torch.equal(a, b)


def test_resume_after_interruption_is_exact(scene, tmp_path):
    def trainer(out: Path, resume: bool = False) -> Trainer:
        cfg = TrainConfig(
            data=scene, output=out, max_steps=80, progress=False, device="cpu", resume=resume
        )
        return Trainer(
            "splat", SplatConfig(init_num_points=2000, sh_degree=1, refine_every=20), cfg
        )

    straight = trainer(tmp_path / "a")
    straight.train()
    interrupted = trainer(tmp_path / "b")
    interrupted.setup()
    while interrupted.step < 40:  # as if Ctrl-C arrived after step 40
        interrupted.train_step()
    interrupted.save()
    resumed = trainer(tmp_path / "b", resume=True)
    resumed.train()
    # densification ran at steps 20, 40 and 60: sizes and values must agree
    for name, p in straight.model.splats.items():
        torch.testing.assert_close(p, resumed.model.splats[name], atol=1e-6, rtol=1e-5)


def test_mcmc_strategy_runs_on_cpu(scene, tmp_path):
    trainer = train(
        scene,
        tmp_path / "mcmc",
        60,
        strategy="mcmc",
        mcmc_cap_max=2600,
        opacity_reg=0.01,
        refine_every=10,
    )
    assert 2000 < trainer.model.num_gaussians <= 2600


def test_relocation_matches_the_mcmc_formula():
    binoms = torch.tensor(
        [[math.comb(n, k) for k in range(8)] for n in range(8)], dtype=torch.float64
    )
    opacities = torch.tensor([0.3, 0.9, 0.5], dtype=torch.float64)
    ratios = torch.tensor([1, 3, 5])
    scales = torch.ones(3, 3, dtype=torch.float64)
    new_o, new_s = relocation_torch(opacities, scales, ratios, binoms)
    for i in range(3):
        o, n = float(opacities[i]), int(ratios[i])
        o2 = 1 - (1 - o) ** (1 / n)
        denom = sum(
            math.comb(j - 1, k) * (-1) ** k * o2 ** (k + 1) / math.sqrt(k + 1)
            for j in range(1, n + 1)
            for k in range(j)
        )
        assert float(new_o[i]) == pytest.approx(o2)
        assert float(new_s[i, 0]) == pytest.approx(o / denom)
    # n copies of the new opacity composite back to the old one
    assert torch.allclose(1 - (1 - new_o) ** ratios, opacities)
    assert new_s[0, 0] == pytest.approx(1.0)  # one copy: unchanged


def test_covariances_match_gsplat_reference():
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    q, s = torch.randn(10, 4), torch.rand(10, 3)
    ref, _ = _quat_scale_to_covar_preci(q / q.norm(dim=-1, keepdim=True), s, compute_preci=False)
    torch.testing.assert_close(covariances_torch(q, s), ref, atol=1e-6, rtol=1e-5)


def one_gaussian_model(colour=(1.0, 0.0, 0.0), **config) -> SplatModel:
    scene = SceneMeta(
        bounds=[[-1, -1, -1], [1, 1, 1]], camera_extent=4.0, background=[0.0, 0.0, 0.0]
    )
    model = SplatModel(SplatConfig(sh_degree=0, **config), scene)
    model.set_splats(
        SplatData(
            means=torch.zeros(1, 3),
            quats=torch.tensor([[1.0, 0, 0, 0]]),
            scales=torch.log(torch.full((1, 3), 0.2)),
            opacities=torch.logit(torch.tensor([0.8])),
            sh0=((torch.tensor(colour) - 0.5) / 0.28209479177387814).view(1, 1, 3),
            shN=torch.zeros(1, 0, 3),
        )
    )
    return model.eval()


@pytest.mark.parametrize("eps2d", [0.3, 0.1])
def test_one_gaussian_renders_its_analytic_peak(eps2d):
    model = one_gaussian_model(eps2d=eps2d)
    c2w = look_at(torch.tensor([[0.0, -4.0, 0.0]]), torch.zeros(1, 3))
    K = torch.tensor([[[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]]])
    with torch.no_grad():
        out = model.render(Cameras(c2w, K, 32, 32))
    # the pixel centre nearest the projected mean (16,16) is 0.5 px away in x and y
    sigma_px = 50 * 0.2 / 4  # projected std in pixels (EWA)
    var = sigma_px**2 + eps2d  # plus the config's blur
    expected = 0.8 * math.exp(-0.5 * (0.25 + 0.25) / var)
    assert float(out.alpha[0, 15, 15, 0]) == pytest.approx(expected, rel=1e-4)
    assert float(out.rgb[0, 15, 15, 0]) == pytest.approx(expected, rel=1e-4)  # red over black
    assert float(out.rgb[0, 15, 15, 1]) == pytest.approx(0.0, abs=1e-6)
    assert float(out.depth[0, 15, 15, 0]) == pytest.approx(4.0, rel=1e-3)


def test_export_ply_and_spz_and_load_them_back(scene, tmp_path):
    from snap3d.io.export import export_run

    train(scene, tmp_path / "run", 30)
    model, _, _ = load_model(tmp_path / "run")
    ply = export_run(tmp_path / "run", "ply")
    spz = export_run(tmp_path / "run", "spz")
    assert ply.name == "splat.ply" and spz.suffix == ".spz"
    back = load_splats(ply)
    torch.testing.assert_close(back.means, model.splats["means"].detach())
    cam = Cameras.from_dict(json.loads((tmp_path / "run" / "cameras.json").read_text()))[0]
    with torch.no_grad():
        ref = model.render(cam).rgb
        from_spz = splat_model_from_file(spz)
        from_spz.background.copy_(model.background)
        mse = float(((from_spz.render(cam).rgb - ref) ** 2).mean())
    assert -10 * math.log10(max(mse, 1e-12)) > 35  # SPZ quantisation costs little


def test_fine_tune_from_a_ply_made_elsewhere(scene, tmp_path):
    model = one_gaussian_model()
    save_splats(tmp_path / "elsewhere.ply", model.to_splats())
    cfg = TrainConfig(data=scene, output=tmp_path / "ft", max_steps=5, progress=False, device="cpu")
    trainer = Trainer(
        "splat", SplatConfig(init="file", init_file=tmp_path / "elsewhere.ply", sh_degree=0), cfg
    )
    trainer.train()
    assert trainer.model.num_gaussians == 1


def test_render_command_writes_an_orbit_video(scene, tmp_path):
    import imageio.v3 as iio

    from snap3d.cli import main

    train(scene, tmp_path / "run", 10)
    out = tmp_path / "orbit.mp4"
    main(["render", str(tmp_path / "run"), "--orbit", "6", "--output", str(out), "--device", "cpu"])
    frames = iio.imread(out, plugin="pyav") if _has_pyav() else None
    assert out.stat().st_size > 0
    if frames is not None:
        assert frames.shape[0] == 6
    frames_dir = tmp_path / "frames"
    main(
        [
            "render",
            str(tmp_path / "run"),
            "--orbit",
            "3",
            "--output",
            str(frames_dir),
            "--device",
            "cpu",
        ]
    )
    assert sorted(p.name for p in frames_dir.iterdir()) == ["00000.png", "00001.png", "00002.png"]


def _has_pyav() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def test_orbit_path_circles_the_focus_point():
    from snap3d.render.paths import focus_point, orbit_path

    angles = torch.linspace(0, 2 * math.pi, 9)[:-1]
    eyes = torch.stack(
        [3 * torch.cos(angles), 3 * torch.sin(angles), torch.full_like(angles, 1.0)], -1
    )
    target = torch.tensor([0.2, -0.1, 0.3])
    c2w = look_at(eyes, target.expand_as(eyes))
    cams = Cameras(c2w, torch.eye(3).repeat(8, 1, 1), 8, 8)
    torch.testing.assert_close(focus_point(cams), target, atol=1e-4, rtol=0)
    path = orbit_path(cams, 16)
    rel = path.centers - target
    torch.testing.assert_close(rel[:, 2], torch.full((16,), 0.7), atol=1e-4, rtol=0)
    horizontal = rel[:, :2].norm(dim=-1)
    expected = (eyes - target)[:, :2].norm(dim=-1).mean()
    torch.testing.assert_close(horizontal, expected.expand(16), atol=1e-4, rtol=0)
    # every camera looks at the target
    to_target = -rel / rel.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(path.forward, to_target, atol=1e-5, rtol=0)


def test_demo_scene_is_found():
    from snap3d.demo import bundled_scene

    assert (bundled_scene("object360") / "transforms_train.json").is_file()
