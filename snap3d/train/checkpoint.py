"""Run directories: config.json, safetensors checkpoints, exact resumption.

Layout of a run directory::

    config.json                      method, model config, trainer config, scene facts
    checkpoints/step-000500/
        model.safetensors            the model's state_dict
        trainer.safetensors          optimizer moments, RNG states, training state
        trainer.json                 step, optimizer hyperparameters
    metrics.json                     evaluation history
    renders/<split>/0000.png         written by eval

Each checkpoint folder is written to a temporary name and renamed, so an interrupted
write never leaves a half checkpoint behind. Nothing here unpickles.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from snap3d import __version__
from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_dir, atomic_write
from snap3d.representations.base import SceneMeta, SceneModel

CONFIG_NAME = "config.json"


# -- config dataclasses <-> JSON ---------------------------------------------------------


def config_to_dict(config: Any) -> dict:
    """A (possibly nested) config dataclass as JSON-ready values."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(config)


def config_from_dict(cls: type, data: dict) -> Any:
    """Rebuild a config dataclass from ``config_to_dict`` output; unknown keys are errors.

    A key missing from ``data`` takes the class's ``saved_defaults`` entry where it has
    one (the value that runs saved before the field existed, or before its default
    changed, were trained with), else the field's default."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise Snap3dError(f"{cls.__name__} has no fields {sorted(unknown)}")
    data = {**getattr(cls, "saved_defaults", {}), **data}
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        for option in options:
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return config_from_dict(option, value)
        hint = options[0] if len(options) == 1 else Any
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    if hint is Path:
        return Path(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


# -- run config --------------------------------------------------------------------------


def save_run_config(
    run_dir: Path, method: str, model_config: Any, train_config: Any, scene: SceneMeta
) -> None:
    payload = {
        "snap3d_version": __version__,
        "method": method,
        "model": config_to_dict(model_config),
        "train": config_to_dict(train_config),
        "scene": scene.to_dict(),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(run_dir / CONFIG_NAME, "w") as f:
        json.dump(payload, f, indent=2)


def load_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise Snap3dError("not a snap3d run directory (no config.json)", run_dir)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Snap3dError(f"malformed JSON at line {e.lineno}: {e.msg}", path) from e


# -- checkpoints -------------------------------------------------------------------------


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / "model.safetensors").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def _optimizer_payload(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict, dict]:
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if isinstance(value, Tensor):
                    tensors[f"optim/{name}/{idx}/{key}"] = value.detach().cpu().contiguous()
        meta[name] = {
            "param_groups": sd["param_groups"],
            "scalars": {
                str(idx): {k: v for k, v in st.items() if not isinstance(v, Tensor)}
                for idx, st in sd["state"].items()
            },
        }
    return tensors, meta


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: SceneModel,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    generator: torch.Generator | None = None,
    keep: int = 2,
) -> Path:
    """Write ``checkpoints/step-XXXXXX`` atomically and drop all but the ``keep`` newest."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"step-{step:06d}"
    model_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    trainer_tensors, optim_meta = _optimizer_payload(optimizers or {})
    trainer_tensors["rng/torch"] = torch.get_rng_state()
    if generator is not None:
        trainer_tensors["rng/generator"] = generator.get_state()
    for k, v in model.training_state().items():
        trainer_tensors[f"train_state/{k}"] = v.detach().cpu().contiguous()
    with atomic_dir(target) as tmp:
        save_file(model_state, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        save_file(trainer_tensors, str(tmp / "trainer.safetensors"))
        (tmp / "trainer.json").write_text(
            json.dumps({"step": step, "optimizers": optim_meta}, indent=1)
        )
    for old in checkpoint_dirs(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_safetensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise Snap3dError("checkpoint file is missing", path)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise Snap3dError(f"cannot read checkpoint: {e}", path) from e


def restore_trainer(
    ckpt: Path,
    model: SceneModel,
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator | None,
) -> int:
    """Load optimizer moments, RNG states and training state; returns the saved step."""
    tensors = read_safetensors(ckpt / "trainer.safetensors")
    meta = json.loads((ckpt / "trainer.json").read_text())
    for name, opt in optimizers.items():
        if name not in meta["optimizers"]:
            raise Snap3dError(f"checkpoint has no optimizer state for {name!r}", ckpt)
        info = meta["optimizers"][name]
        state: dict[int, dict] = {}
        for idx, scalars in info["scalars"].items():
            state[int(idx)] = dict(scalars)
        prefix = f"optim/{name}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                idx, field = key[len(prefix) :].split("/", 1)
                state.setdefault(int(idx), {})[field] = value
        opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])
    if generator is not None and "rng/generator" in tensors:
        generator.set_state(tensors["rng/generator"])
    model.load_training_state(
        {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("train_state/")}
    )
    return int(meta["step"])


def load_model(
    run_dir: Path, device: torch.device | str = "cpu", checkpoint: Path | None = None
) -> tuple[SceneModel, dict, int]:
    """Rebuild a trained model from its run directory alone.

    Returns:
        (model in eval mode on ``device``, the run config dict, the checkpoint's step).
    """
    from snap3d.train.registry import get_method

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    spec = get_method(cfg["method"])
    model_config = config_from_dict(spec.config_cls, cfg["model"])
    scene = SceneMeta.from_dict(cfg["scene"])
    ckpt = checkpoint or latest_checkpoint(run_dir)
    if ckpt is None:
        raise Snap3dError("run directory has no checkpoint yet", run_dir)
    model = spec.model_cls(model_config, scene)
    model.load_checkpoint_state(read_safetensors(ckpt / "model.safetensors"))
    step = int(json.loads((ckpt / "trainer.json").read_text())["step"])
    return model.to(device).eval(), cfg, step
