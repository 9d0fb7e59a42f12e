"""snap3d's core with the gsplat nerfstudio pins (1.4.0) as with the main env's (1.5.x).

gsplat 1.4 gives and its strategies read ``radii`` as [C, N]; 1.5 as [C, N, 2]. Our
rasterizers always give [C, N, 2] and ``strategy_info`` hands the installed strategies
their shape. These tests run in both environments: scripts/test_nerfstudio.sh runs them
in .venv-ns (gsplat 1.4.0), ``make test`` in .venv (gsplat 1.5).
"""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

pytest.importorskip("gsplat", reason="the densification strategies are gsplat's")

from test_splat import tiny_scene  # noqa: E402

from snap3d.cameras import Cameras, look_at  # noqa: E402
from snap3d.render import rasterize_gaussians  # noqa: E402
from snap3d.representations import strategies  # noqa: E402
from snap3d.representations.splat import SplatConfig  # noqa: E402
from snap3d.train import TrainConfig, Trainer  # noqa: E402

GSPLAT = importlib.metadata.version("gsplat")


def render_meta(n: int = 50):
    torch.manual_seed(0)
    means = torch.randn(n, 3) * 0.5
    means[0] = torch.tensor([0.0, -10.0, 0.0])  # behind the camera: culled, radii 0
    quats = torch.nn.functional.normalize(torch.randn(n, 4), dim=-1)
    scales = torch.rand(n, 3) * 0.1 + 0.01
    # an anisotropic Gaussian whose two pixel radii differ
    scales[1] = torch.tensor([0.3, 0.02, 0.02])
    quats[1] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    c2w = look_at(torch.tensor([[0.0, -4.0, 0.0]]), torch.zeros(1, 3))
    cams = Cameras(c2w, torch.tensor([[[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]]]), 48, 32)
    _, _, meta = rasterize_gaussians(
        means.requires_grad_(),
        quats,
        scales,
        torch.full((n,), 0.5),
        torch.rand(n, 3),
        cams.viewmats,
        cams.Ks,
        cams.width,
        cams.height,
        backend="torch",
    )
    return meta


def test_rasterizer_radii_are_pairs():
    radii = render_meta()["radii"]
    assert radii.shape == (1, 50, 2)
    assert (radii[0, 0] == 0).all()
    assert radii[0, 1, 0] != radii[0, 1, 1]


def test_strategy_info_gives_gsplat_before_1_5_one_radius(monkeypatch):
    meta = render_meta()
    monkeypatch.setattr(strategies, "strategies_take_radius_pairs", lambda: False)
    info = strategies.strategy_info(meta)
    assert info["radii"].shape == (1, 50)
    assert torch.equal(info["radii"], meta["radii"].amax(-1))
    assert info["radii"][0, 0] == 0
    # the same means2d object: its gradient reaches the strategy
    assert info["means2d"] is meta["means2d"]
    assert meta["radii"].shape == (1, 50, 2)  # ours is left as it was

    monkeypatch.setattr(strategies, "strategies_take_radius_pairs", lambda: True)
    assert strategies.strategy_info(meta) is meta


def test_installed_gsplat_version_is_read():
    major, minor = (int(x) for x in GSPLAT.split(".")[:2])
    assert strategies.strategies_take_radius_pairs() == ((major, minor) >= (1, 5))


def test_default_strategy_densifies_with_the_installed_gsplat(tmp_path):
    """Training with refinement (steps 20 and 40) through the installed gsplat's
    DefaultStrategy: gsplat 1.4 reads [C, N] radii, 1.5 [C, N, 2]."""
    cfg = TrainConfig(
        data=tiny_scene(tmp_path),
        output=tmp_path / "run",
        max_steps=50,
        progress=False,
        device="cpu",
        save_every=0,
    )
    trainer = Trainer("splat", SplatConfig(init_num_points=500, sh_degree=1, refine_every=20), cfg)
    trainer.setup()
    n0 = trainer.model.num_gaussians
    trainer.train()
    state = trainer.model._strategy_state
    assert trainer.model.num_gaussians != n0, GSPLAT
    assert state["grad2d"].shape == (trainer.model.num_gaussians,)
