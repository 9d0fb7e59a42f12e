"""The `lpgs` method: decoding children, training, tree management, distillation from a
splat run, and the compact file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_splat import tiny_scene

from snap3d.cameras import Cameras, intrinsics_matrix, look_at
from snap3d.data import load as load_data
from snap3d.errors import Snap3dError
from snap3d.io import load_splats
from snap3d.io.export import export_run
from snap3d.io.lpgs import load_lpgs, read_lpgs, save_lpgs
from snap3d.metrics import psnr
from snap3d.representations.base import SceneMeta
from snap3d.representations.lpgs import LPGSConfig, LPGSModel, kd_clusters
from snap3d.representations.splat import SplatConfig
from snap3d.train import TrainConfig, Trainer, load_model

# Small enough to train in seconds on a busy CPU.
TINY = dict(
    children=4,
    sh_degree=1,
    init_num_parents=250,
    hash_levels=4,
    hash_log2_size=10,
    hash_base_resolution=8,
    hash_max_resolution=64,
    hidden_dim=32,
    max_parents=600,
    refine_every=20,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a CPU shared with other jobs, two torch threads wait on each other: one thread
    runs these small problems several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scene_meta() -> SceneMeta:
    return SceneMeta(bounds=[[-1.0] * 3, [1.0] * 3], camera_extent=4.0, background=[1.0] * 3)


def front_camera(size: int = 32) -> Cameras:
    """One camera 4 m in front of the origin, z up."""
    c2w = look_at(torch.tensor([[0.0, -4.0, 1.0]]), torch.zeros(1, 3))
    return Cameras(c2w, intrinsics_matrix(size * 1.2, size * 1.2, size / 2, size / 2), size, size)


def random_model(n: int = 50, **overrides) -> LPGSModel:
    model = LPGSModel(LPGSConfig(**{**TINY, **overrides}), scene_meta())
    g = torch.Generator().manual_seed(0)
    model.set_parents(torch.rand(n, 3, generator=g) - 0.5, torch.full((n,), math.log(0.1)))
    return model


def test_parents_expand_to_k_children_and_render():
    model = random_model(50)
    c = model.expand()
    assert c.means.shape == (200, 3) and c.quats.shape == (200, 4)
    assert c.scales.shape == (200, 3) and c.opacities.shape == (200,)
    assert c.sh0.shape == (200, 1, 3) and c.shN.shape == (200, 3, 3)
    out = model.render(front_camera())
    assert out.rgb.shape == (1, 32, 32, 3) and out.alpha.shape == (1, 32, 32, 1)
    assert out.extras["means2d"].shape == (1, 200, 2)
    out.rgb.mean().backward()
    for name in ("parents.means", "parents.scales", "hash.params", "head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_decoding_follows_the_documented_formula():
    model = random_model(3, init_opacity=0.2, child_scale=0.25)
    with torch.no_grad():
        model.head.weight.zero_()  # the head outputs its bias only
        model.parents["opacities"][1] = 2.0
    c = model.expand()
    p = model.parents
    size = torch.exp(p["scales"])
    expected = p["means"][:, None] + size[:, None, None] * model.pattern
    torch.testing.assert_close(c.means.view(3, 4, 3), expected)
    torch.testing.assert_close(
        c.scales, (p["scales"] + math.log(0.25)).repeat_interleave(4)[:, None].expand(-1, 3)
    )
    logit = math.log(0.2 / 0.8)
    torch.testing.assert_close(
        c.opacities.view(3, 4)[:, 0], torch.tensor([logit, logit + 2, logit])
    )
    torch.testing.assert_close(c.quats, torch.tensor([[1.0, 0, 0, 0]]).expand(12, 4))
    # the pattern: K points on a sphere of pattern_radius
    torch.testing.assert_close(model.pattern.norm(dim=-1), torch.full((4,), 0.5))
    # to_splats drops only what can never be drawn
    with torch.no_grad():
        model.parents["opacities"][2] = -30.0
    assert model.to_splats().num == 8


def test_refine_prunes_promotes_and_keeps_optimizer_state_in_step():
    model = random_model(50, max_parents=56, grow_fraction=0.5)
    optimizers = {
        name: torch.optim.Adam([{"params": g.params, "lr": g.lr, "name": name}], eps=g.eps)
        for name, g in model.param_groups().items()
    }
    model.render(front_camera()).rgb.mean().backward()
    for opt in optimizers.values():
        opt.step()
    with torch.no_grad():
        model.parents["opacities"][:5] = -30.0  # transparent children: pruned
    n = 50 * 4
    model._count = torch.ones(n)
    model._grad2d = torch.zeros(n)
    model._grad2d[40:60] = torch.linspace(1.0, 2.0, 20)  # 20 strong children
    model._error = torch.zeros(n)
    strong = model.expand().means[40:60].detach()
    result = model.refine(optimizers)
    # room: 56 - 45 = 11 of the 20 strong children, the strongest first
    assert result == {"pruned": 5, "promoted": 11}
    assert model.num_parents == 56
    torch.testing.assert_close(model.parents["means"][45:], strong.flip(0)[:11])
    for name in ("means", "scales", "opacities"):
        param = model.parents[name]
        opt = optimizers[name]
        assert opt.param_groups[0]["params"][0] is param
        state = opt.state[param]
        assert state["exp_avg"].shape == param.shape == state["exp_avg_sq"].shape
        assert state["exp_avg"][45:].abs().sum() == 0  # new parents start with no moments
    assert model._count.shape == (56 * 4,)
    # unseen parents are pruned too
    model._count = torch.zeros(56 * 4)
    assert model.refine(optimizers) == {"pruned": 56, "promoted": 0}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return tiny_scene(tmp_path_factory.mktemp("lpgs"))


@pytest.fixture(scope="module")
def run(scene, tmp_path_factory) -> tuple[Path, Trainer, float]:
    """A short LPGS run on the tiny scene: (run dir, trainer, test PSNR before training)."""
    out = tmp_path_factory.mktemp("lpgs_run") / "run"
    cfg = TrainConfig(data=scene, output=out, max_steps=100, progress=False, device="cpu")
    trainer = Trainer("lpgs", LPGSConfig(**TINY), cfg)
    trainer.setup()
    before = trainer.run_eval()["psnr"]
    trainer.train()
    return out, trainer, before


def test_training_lowers_the_error_and_refines(run):
    out, trainer, before = run
    after = trainer.run_eval()["psnr"]
    assert after > before + 3, (before, after)
    # the CPU schedule at 100 steps refines every 20 steps from step 5 to 70
    assert trainer.model.num_parents != 250
    param = trainer.model.parents["means"]
    assert trainer.optimizers["means"].state[param]["exp_avg"].shape == param.shape


def test_checkpoint_rebuilds_the_resized_model(run):
    out, trainer, _ = run
    model, cfg, step = load_model(out)
    assert step == 100 and cfg["method"] == "lpgs"
    assert model.num_parents == trainer.model.num_parents
    cam = front_camera()
    with torch.no_grad():
        assert torch.equal(model.render(cam).rgb, trainer.model.eval().render(cam).rgb)


def test_compact_file_round_trips(run, scene, tmp_path):
    out, trainer, _ = run
    model = trainer.model.eval()
    test = load_data(scene, split="test")
    images = torch.stack([test.image(i) for i in range(len(test))])

    def score(m: LPGSModel) -> float:
        with torch.no_grad():
            return float(psnr(m.render(test.cameras).rgb.clamp(0, 1), images).mean())

    path = tmp_path / "scene.lpgs"
    size = save_lpgs(path, model)
    assert path.stat().st_size == size
    loaded = load_lpgs(path)
    assert loaded.num_parents == model.num_parents
    assert abs(score(loaded) - score(model)) < 0.1
    header = read_lpgs(path).header
    encodings = {s["name"]: s["encoding"] for s in header["sections"]}
    assert encodings["parents.means"] == "u16" and encodings["hash.params"] == "i8"
    assert encodings["hidden.0.weight"] == "i8" and encodings["head.weight"] == "f16"
    assert encodings["head.bias"] == "f16"
    assert encodings["parents.features"] == "u8" and encodings["box"] == "f32"

    exact_path = tmp_path / "exact.lpgs"
    assert save_lpgs(exact_path, model, precision="lossless") > 2 * size
    exact = load_lpgs(exact_path)
    for name, value in model.state_dict().items():
        assert torch.equal(exact.state_dict()[name], value), name
    cam = front_camera()
    with torch.no_grad():
        assert torch.equal(exact.render(cam).rgb, model.render(cam).rgb)


def test_bad_files_are_refused_with_their_path(run, tmp_path):
    model = run[1].model
    path = tmp_path / "good.lpgs"
    save_lpgs(path, model)
    blob = path.read_bytes()
    cases = {
        "not an LPGS file": b"PLY\n" + blob[4:],
        "truncated": blob[: len(blob) // 2],
        "version 9": blob[:4] + (9).to_bytes(4, "little") + blob[8:],
        "too short": blob[:6],
    }
    for message, data in cases.items():
        bad = tmp_path / "bad.lpgs"
        bad.write_bytes(data)
        with pytest.raises(Snap3dError, match=message) as e:
            load_lpgs(bad)
        assert str(bad) in str(e.value)
    with pytest.raises(Snap3dError, match="precision"):
        save_lpgs(path, model, precision="int4")


def test_export_command_writes_lpgs_ply_and_spz(run):
    out, trainer, _ = run
    expected = trainer.model.to_splats().num
    lpgs = export_run(out, "lpgs")
    assert lpgs.suffix == ".lpgs" and load_lpgs(lpgs).num_parents == trainer.model.num_parents
    ply = export_run(out, "ply")
    assert load_splats(ply).num == expected
    spz = export_run(out, "spz")
    assert load_splats(spz).num == expected
    assert lpgs.stat().st_size < ply.stat().st_size / 5
    with pytest.raises(Snap3dError, match="not 'glb'"):
        trainer.model.export("glb", out / "x.glb")


def test_the_parent_budget_is_kept_with_the_training_state():
    model = random_model(10)
    assert model.budget == TINY["max_parents"]
    model.budget = 1234  # as distill sets it from a splat run
    other = random_model(10)
    other.load_training_state(model.training_state())
    assert other.budget == 1234


def test_kd_clusters_hold_exactly_k_points_each():
    g = torch.Generator().manual_seed(0)
    # dense and sparse parts: every cluster still gets K points, and they stay together
    points = torch.cat(
        [torch.randn(301, 3, generator=g) * 0.01, torch.rand(100, 3, generator=g) * 10]
    )
    cell, members = kd_clusters(points, 4)
    counts = torch.bincount(cell)
    assert counts.shape[0] == math.ceil(401 / 4) and int((counts < 4).sum()) == 1
    assert members.index.shape == (101, 4) and int(members.valid.sum()) == 401
    for p in range(101):
        assert bool((cell[members.index[p][members.valid[p]]] == p).all())
    # the dense blob is not spread over the sparse part's clusters
    assert len(cell[:301].unique()) <= math.ceil(301 / 4) + 2


def test_init_from_a_splat_run_distils_the_heads(scene, tmp_path):
    splat_cfg = TrainConfig(
        data=scene, output=tmp_path / "splat", max_steps=20, progress=False, device="cpu"
    )
    Trainer("splat", SplatConfig(init_num_points=500, sh_degree=1), splat_cfg).train()
    teacher = load_model(tmp_path / "splat")[0].to_splats()
    opaque = int((torch.sigmoid(teacher.opacities) > 0.02).sum())

    model = LPGSModel(LPGSConfig(**TINY), load_model(tmp_path / "splat")[0].scene)
    history = model.distill(teacher, steps=30)
    assert history["last"] < 0.8 * history["first"]
    assert model.num_parents == math.ceil(opaque / 4)  # clusters of exactly K = 4
    assert model.budget == max(TINY["max_parents"], math.ceil(2 * opaque / 4))

    cfg = TrainConfig(
        data=scene, output=tmp_path / "lpgs", max_steps=5, progress=False, device="cpu"
    )
    model_cfg = LPGSConfig(**{**TINY, "distill_steps": 5}, init_from=tmp_path / "splat")
    trainer = Trainer("lpgs", model_cfg, cfg)
    trainer.setup()
    assert trainer.model.num_parents == model.num_parents
    trainer.train()
    assert math.isfinite(trainer.run_eval()["psnr"])
