"""The one training loop every method shares."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from snap3d.data import load as load_data
from snap3d.data.dataset import SceneDataset
from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_write
from snap3d.representations.base import ParamGroup, SceneMeta, SceneModel, batch_to
from snap3d.train.checkpoint import (
    config_from_dict,
    latest_checkpoint,
    load_run_config,
    read_safetensors,
    restore_trainer,
    save_checkpoint,
    save_run_config,
)
from snap3d.train.config import TrainConfig, resolve_device
from snap3d.train.evaluate import evaluate
from snap3d.train.registry import get_method

StepCallback = Callable[["Trainer", int, dict[str, float]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer:
    """Builds a method's model from data, optimises it, checkpoints and evaluates.

    Args:
        method: a registered method name.
        model_config: that method's config dataclass (ignored on resume: the run's own
            config is used so the model matches its checkpoint).
        config: trainer settings.
        callbacks: called as ``cb(trainer, step, losses)`` after every step (the live
            viewer uses this).
    """

    def __init__(
        self,
        method: str,
        model_config: Any,
        config: TrainConfig,
        callbacks: list[StepCallback] | None = None,
    ):
        self.spec = get_method(method)
        self.method = method
        self.model_config = model_config
        self.config = config
        self.callbacks = list(callbacks or [])
        self.device = resolve_device(config.device)
        self.step = 0
        self.paused = False
        self.model: SceneModel | None = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.groups: dict[str, ParamGroup] = {}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.history: list[dict] = []
        self._eval_data: SceneDataset | None | bool = False

    # -- setup ----------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        if self.config.output is not None:
            return Path(self.config.output)
        name = Path(self.config.data).name if self.config.data else "scene"
        return Path("runs") / f"{self.method}-{name}"

    @property
    def max_steps(self) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        default = getattr(self.model_config, "default_max_steps", None)
        return int(default(self.device)) if callable(default) else 1000

    def setup(self) -> None:
        cfg = self.config
        run_dir = self.run_dir
        ckpt = latest_checkpoint(run_dir) if cfg.resume else None
        if cfg.resume and ckpt is None:
            raise Snap3dError("--resume was given but the run has no checkpoint", run_dir)
        if ckpt is not None:
            saved = load_run_config(run_dir)
            if saved["method"] != self.method:
                raise Snap3dError(
                    f"run was trained with {saved['method']!r}, not {self.method!r}", run_dir
                )
            self.model_config = config_from_dict(self.spec.config_cls, saved["model"])
            if cfg.data is None:
                self.config = cfg = replace(cfg, data=Path(saved["train"]["data"]))
        if cfg.data is None:
            raise Snap3dError("no data: pass --data PATH")
        seed_everything(cfg.seed)
        self.train_data = load_data(
            cfg.data, split="train", downscale=cfg.downscale, background=cfg.background
        )
        scene = SceneMeta.from_dataset(self.train_data)
        model = self.spec.model_cls(self.model_config, scene)
        model.max_steps = self.max_steps
        if ckpt is None:
            model.initialize(self.train_data)
        else:
            model.load_checkpoint_state(read_safetensors(ckpt / "model.safetensors"))
        self.model = model.to(self.device)
        self.groups = self.model.param_groups()
        self.optimizers = {
            name: torch.optim.Adam(
                [{"params": g.params, "lr": g.lr, "name": name}],
                eps=g.eps,
                betas=g.betas,
                weight_decay=g.weight_decay,
            )
            for name, g in self.groups.items()
        }
        if ckpt is not None:
            self.step = restore_trainer(ckpt, self.model, self.optimizers, self.generator)
            metrics_path = run_dir / "metrics.json"
            if metrics_path.is_file():
                self.history = json.loads(metrics_path.read_text()).get("history", [])
        else:
            save_run_config(run_dir, self.method, self.model_config, cfg, scene)
            with atomic_write(run_dir / "cameras.json", "w") as f:
                json.dump(self.train_data.cameras.to_dict(), f)

    def eval_data(self) -> SceneDataset | None:
        """The evaluation split, or None when the scene has none."""
        if self._eval_data is False:
            self._eval_data = None
            for split in (self.config.eval_split, "val"):
                try:
                    self._eval_data = load_data(
                        self.config.data,
                        split=split,
                        downscale=self.config.downscale,
                        background=self.config.background,
                    )
                    break
                except Snap3dError:
                    continue
        return self._eval_data

    # -- the loop -------------------------------------------------------------------

    def _set_learning_rates(self) -> None:
        for name, opt in self.optimizers.items():
            lr = self.groups[name].lr_at(self.step, self.max_steps)
            for group in opt.param_groups:
                group["lr"] = lr

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the losses as floats."""
        model = self.model
        step = self.step
        self._set_learning_rates()
        batch = model.train_batch(self.train_data, step, self.generator)
        batch = batch_to(batch, self.device)
        batch["step"] = step
        output = model(batch)
        losses = model.loss(batch, output)
        total = sum(losses.values())
        if not bool(torch.isfinite(total)):
            last = latest_checkpoint(self.run_dir)
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
            raise Snap3dError(
                f"the loss became {float(total)} at step {step} "
                f"({', '.join(f'{k}={float(v):.4g}' for k, v in losses.items())}); "
                f"training stopped and {where}"
            )
        model.before_backward(step, output, self.optimizers)
        total.backward()
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.after_step(step, output, self.optimizers)
        self.step += 1
        values = {k: float(v.detach()) for k, v in losses.items()}
        values["loss"] = float(total.detach())
        return values

    def save(self) -> Path:
        return save_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self.optimizers,
            self.generator,
            keep=self.config.keep_checkpoints,
        )

    def run_eval(self, write_renders: bool = False) -> dict | None:
        data = self.eval_data()
        if data is None:
            return None
        render_dir = self.run_dir / "renders" / data.split if write_renders else None
        result = evaluate(self.model, data, render_dir, self.device)
        result = {"step": self.step, "split": data.split, **result}
        self.history.append({k: v for k, v in result.items() if k != "per_image_psnr"})
        with atomic_write(self.run_dir / "metrics.json", "w") as f:
            json.dump({"latest": result, "history": self.history}, f, indent=1)
        return result

    def train(self) -> Path:
        """Train to ``max_steps``; Ctrl-C saves a checkpoint that ``--resume`` continues."""
        if self.model is None:
            self.setup()
        cfg = self.config
        writer = _tensorboard(self.run_dir) if cfg.tensorboard else None
        progress = _progress(cfg.progress)
        start_time = time.perf_counter()
        losses: dict[str, float] = {}
        try:
            with progress:
                task = progress.add_task(
                    f"{self.method}", total=self.max_steps, completed=self.step, loss=math.nan
                )
                while self.step < self.max_steps:
                    while self.paused:
                        time.sleep(0.05)
                    losses = self.train_step()
                    progress.update(task, completed=self.step, loss=losses["loss"])
                    if writer is not None:
                        for k, v in losses.items():
                            writer.add_scalar(f"train/{k}", v, self.step)
                    for cb in self.callbacks:
                        cb(self, self.step, losses)
                    if cfg.save_every and self.step % cfg.save_every == 0:
                        self.save()
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        result = self.run_eval()
                        if result and writer is not None:
                            writer.add_scalar("eval/psnr", result["psnr"], self.step)
            self.model.finish_training(self.train_data, progress=cfg.progress)
        except KeyboardInterrupt:
            ckpt = self.save()
            print(f"\ninterrupted at step {self.step}; saved {ckpt}; continue with --resume")
            raise
        self.train_seconds = time.perf_counter() - start_time
        self.save()
        return self.run_dir


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise Snap3dError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from e
    return SummaryWriter(str(run_dir / "tensorboard"))
