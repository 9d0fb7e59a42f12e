"""The training loop, checkpoints and evaluation, proved with a minimal model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from snap3d.errors import Snap3dError
from snap3d.representations.base import ParamGroup, RenderOutput, SceneModel, image_batch
from snap3d.train import TrainConfig, Trainer, evaluate, load_model, register_method
from snap3d.train.checkpoint import checkpoint_dirs, config_from_dict, config_to_dict


@dataclass
class ConstantConfig:
    """A model that paints every pixel one learnable colour."""

    lr: float = 0.05
    full_batch: bool = False
    nan_at_step: int = -1


class ConstantModel(SceneModel):
    method_name = "constant"

    def __init__(self, config: ConstantConfig, scene):
        super().__init__(config, scene)
        self.colour = nn.Parameter(torch.full((3,), 0.5))

    def train_batch(self, dataset, step, generator):
        if self.config.full_batch:
            return image_batch(dataset, list(range(len(dataset))))
        return super().train_batch(dataset, step, generator)

    def render(self, cameras, **kwargs):
        rgb = self.colour.expand(len(cameras), cameras.height, cameras.width, 3)
        return RenderOutput(rgb=rgb)

    def loss(self, batch, output):
        mse = ((output.rgb - batch["image"]) ** 2).mean()
        if batch["step"] == self.config.nan_at_step:
            mse = mse * math.nan
        return {"mse": mse}

    def param_groups(self):
        return {"colour": ParamGroup([self.colour], lr=self.config.lr, eps=1e-8)}


register_method("constant", ConstantConfig, ConstantModel, "one colour (tests)")


def write_blender_scene(root: Path, colours: dict[str, list[tuple[float, float, float]]]) -> Path:
    """A Blender-layout scene whose images are flat colours, cameras on a circle."""
    root.mkdir(parents=True, exist_ok=True)
    for split, cols in colours.items():
        (root / split).mkdir(exist_ok=True)
        frames = []
        for i, c in enumerate(cols):
            img = np.zeros((8, 8, 3), np.uint8) + (np.array(c) * 255).round().astype(np.uint8)
            Image.fromarray(img).save(root / split / f"r_{i}.png")
            a = 2 * math.pi * i / len(cols)
            eye = [4 * math.cos(a), 4 * math.sin(a), 1.0]
            # OpenGL camera looking at the origin: -z towards the target, y up-ish
            z = np.array(eye) / np.linalg.norm(eye)
            x = np.cross([0, 0, 1], z)
            x /= np.linalg.norm(x)
            y = np.cross(z, x)
            m = np.eye(4)
            m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": m.tolist()})
        (root / f"transforms_{split}.json").write_text(
            json.dumps({"camera_angle_x": 0.8, "frames": frames})
        )
    return root


TRAIN = [(0.2, 0.4, 0.6), (0.8, 0.2, 0.4), (0.5, 0.5, 0.1), (0.1, 0.9, 0.3)]
TEST = [(0.4, 0.5, 0.35), (0.3, 0.3, 0.3)]


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_blender_scene(tmp_path / "scene", {"train": TRAIN, "val": TEST, "test": TEST})


def quantised(colours):
    return torch.tensor(colours).mul(255).round().div(255)


def test_minimal_model_converges_to_mean_colour(scene, tmp_path):
    cfg = TrainConfig(
        data=scene, output=tmp_path / "run", max_steps=300, progress=False, device="cpu"
    )
    trainer = Trainer("constant", ConstantConfig(full_batch=True), cfg)
    trainer.train()
    expected = quantised(TRAIN).mean(0)  # the least-squares optimum of one colour
    torch.testing.assert_close(trainer.model.colour.detach(), expected, atol=2e-3, rtol=0)


def test_resume_continues_exactly(scene, tmp_path):
    def run(out: Path, steps: int, resume: bool = False) -> Trainer:
        cfg = TrainConfig(
            data=scene, output=out, max_steps=steps, progress=False, device="cpu", resume=resume
        )
        trainer = Trainer("constant", ConstantConfig(lr=0.01), cfg)
        trainer.train()
        return trainer

    straight = run(tmp_path / "a", 20)
    run(tmp_path / "b", 10)
    resumed = run(tmp_path / "b", 20, resume=True)
    assert resumed.step == 20
    # batches are random images: equal results need the generator state restored too
    assert torch.equal(straight.model.colour, resumed.model.colour)
    sa = straight.optimizers["colour"].state_dict()["state"][0]
    sb = resumed.optimizers["colour"].state_dict()["state"][0]
    assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(
        sa["exp_avg_sq"], sb["exp_avg_sq"]
    )


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(scene, tmp_path):
    cfg = TrainConfig(
        data=scene,
        output=tmp_path / "run",
        max_steps=20,
        save_every=5,
        progress=False,
        device="cpu",
    )
    trainer = Trainer("constant", ConstantConfig(nan_at_step=12), cfg)
    with pytest.raises(Snap3dError, match="at step 12.*step-000010"):
        trainer.train()
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step-000005", "step-000010"]
    model, _, step = load_model(tmp_path / "run")
    assert step == 10 and torch.isfinite(model.colour).all()


def test_failed_checkpoint_write_leaves_previous(scene, tmp_path, monkeypatch):
    cfg = TrainConfig(
        data=scene, output=tmp_path / "run", max_steps=4, progress=False, device="cpu"
    )
    trainer = Trainer("constant", ConstantConfig(), cfg)
    trainer.train()
    import snap3d.train.checkpoint as ckpt_mod

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", broken)
    trainer.step = 8
    with pytest.raises(OSError):
        trainer.save()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000004"]


def test_eval_scores_and_writes_renders_in_order(scene, tmp_path):
    from snap3d.data import load

    cfg = TrainConfig(
        data=scene, output=tmp_path / "run", max_steps=1, progress=False, device="cpu"
    )
    trainer = Trainer("constant", ConstantConfig(), cfg)
    trainer.train()
    model, _, _ = load_model(tmp_path / "run")
    with torch.no_grad():
        model.colour.fill_(0.5)
    test = load(scene, split="test")
    result = evaluate(model, test, tmp_path / "renders")
    gts = quantised(TEST)
    mse = ((gts - 0.5) ** 2).mean(-1)
    assert result["psnr"] == pytest.approx(float((-10 * torch.log10(mse)).mean()), abs=1e-3)
    assert result["num_images"] == 2
    assert result["lpips"] is None or 0 <= result["lpips"] <= 1
    written = sorted(p.name for p in (tmp_path / "renders").iterdir())
    assert written == ["0000.png", "0001.png"]
    arr = np.asarray(Image.open(tmp_path / "renders" / "0000.png"))
    assert (arr == 128).all()


def test_cli_train_and_eval(scene, tmp_path, capsys):
    from snap3d.cli import main

    out = tmp_path / "cli-run"
    main(["train", "constant", "--data", str(scene), "--output", str(out), "--max-steps", "6",
          "--lr", "0.1", "--no-progress", "--device", "cpu"])  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "constant" and cfg["model"]["lr"] == 0.1
    assert cfg["train"]["max_steps"] == 6
    capsys.readouterr()
    main(["eval", str(out), "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 6 and result["num_images"] == 2 and result["split"] == "test"
    assert (out / "renders" / "test" / "0001.png").is_file()


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from snap3d.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "constant", "--data", str(tmp_path / "nowhere"), "--device", "cpu"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "snap3d: error:" in err and "nowhere" in err and "Traceback" not in err


def test_config_round_trip():
    from snap3d.representations.splat import SplatConfig

    cfg = SplatConfig(sh_degree=1, strategy="mcmc", init_file=Path("x.ply"))
    assert config_from_dict(SplatConfig, config_to_dict(cfg)) == cfg
    assert config_from_dict(
        TrainConfig, config_to_dict(TrainConfig(data=Path("d")))
    ) == TrainConfig(data=Path("d"))
    with pytest.raises(Snap3dError, match="no fields"):
        config_from_dict(ConstantConfig, {"bogus": 1})


def test_learning_rate_schedule():
    g = ParamGroup([], lr=1e-2, lr_final=1e-4, warmup_steps=0)
    assert g.lr_at(0, 100) == pytest.approx(1e-2)
    assert g.lr_at(50, 100) == pytest.approx(1e-3)
    assert g.lr_at(100, 100) == pytest.approx(1e-4)
    w = ParamGroup([], lr=1.0, warmup_steps=4)
    assert [w.lr_at(s, 10) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # a learning rate of 0 freezes its group (a decay from 0 once divided by zero)
    assert ParamGroup([], lr=0.0, lr_final=0.0).lr_at(30, 100) == 0.0


def test_background_parsing():
    from snap3d.data.dataset import parse_background

    assert parse_background("white").tolist() == [1.0, 1.0, 1.0]
    assert parse_background("0.5,0.25,0").tolist() == [0.5, 0.25, 0.0]
    with pytest.raises(Snap3dError, match="r,g,b"):
        parse_background("0.5,red,0")
    with pytest.raises(Snap3dError, match="3 values"):
        parse_background("0.5,0.5")
