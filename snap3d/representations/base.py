"""The surface every representation exposes to the trainer, viewer, exporters and plugins.

A representation module provides a config dataclass and a ``SceneModel`` subclass built
from ``(config, SceneMeta)``. ``SceneMeta`` holds the few facts about the training scene
a model needs to be rebuilt without the data (bounds, scale, background), so that a run
can be loaded from its checkpoint alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from snap3d.cameras import Cameras

if TYPE_CHECKING:
    from snap3d.data.dataset import SceneDataset


@dataclass
class RenderOutput:
    """What ``render`` returns. Images are [N,H,W,C]; ray batches are [M,C].

    Attributes:
        rgb: colours in [0,1] (already over the background).
        alpha: accumulated opacity [...,1], when the representation has one.
        depth: expected depth [...,1] along the camera z axis, when available.
        extras: anything else (the rasterizer's meta for densification, ...).
    """

    rgb: Tensor
    alpha: Tensor | None = None
    depth: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class SceneMeta:
    """Facts about the training scene that a model needs to be rebuilt from a checkpoint.

    Attributes:
        bounds: [[xmin,ymin,zmin],[xmax,ymax,zmax]] scene box in world units.
        camera_extent: radius of the training camera centres around their mean (gsplat's
            "scene scale"), in world units.
        background: RGB in [0,1] the training images were composited on.
        has_alpha: whether the training images carry alpha.
        width, height: training image size.
        num_train_images: number of training cameras.
        time_range: (t0, t1) for dynamic scenes, else None.
        num_frames: number of distinct training times (0 for static scenes, and for runs
            saved before it was recorded).
    """

    bounds: list[list[float]]
    camera_extent: float
    background: list[float]
    has_alpha: bool = False
    width: int = 0
    height: int = 0
    num_train_images: int = 0
    time_range: tuple[float, float] | None = None
    num_frames: int = 0

    @classmethod
    def from_dataset(cls, dataset: SceneDataset) -> SceneMeta:
        centers = dataset.cameras.centers
        extent = float((centers - centers.mean(0)).norm(dim=-1).max()) * 1.1
        times = dataset.times
        return cls(
            bounds=dataset.bounds.tolist(),
            camera_extent=max(extent, 1e-3),
            background=dataset.background.tolist(),
            has_alpha=dataset.has_alpha,
            width=dataset.cameras.width,
            height=dataset.cameras.height,
            num_train_images=len(dataset),
            time_range=None if times is None else (float(times.min()), float(times.max())),
            num_frames=0 if times is None else len(torch.unique(times)),
        )

    @classmethod
    def from_dict(cls, d: dict) -> SceneMeta:
        d = dict(d)
        if d.get("time_range") is not None:
            d["time_range"] = tuple(d["time_range"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def bounds_tensor(self) -> Tensor:
        return torch.tensor(self.bounds, dtype=torch.float32)


@dataclass
class ParamGroup:
    """One optimizer: parameters, learning rate and its exponential decay.

    The learning rate goes from ``lr`` at step 0 to ``lr_final`` at the last step
    (constant when ``lr_final`` is None), after ``warmup_steps`` of linear warm-up.
    """

    params: list[nn.Parameter]
    lr: float
    lr_final: float | None = None
    warmup_steps: int = 0
    eps: float = 1e-15
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def lr_at(self, step: int, max_steps: int) -> float:
        lr = self.lr
        if self.lr_final is not None and max_steps > 0 and lr > 0:  # lr 0 freezes the group
            frac = min(max(step / max_steps, 0.0), 1.0)
            lr = self.lr * (self.lr_final / self.lr) ** frac
        if self.warmup_steps > 0 and step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


class SceneModel(nn.Module):
    """Base class of every representation.

    Subclasses set ``method_name`` and implement ``render`` and ``loss``; most also
    override ``initialize`` (data-driven initialisation), ``param_groups`` and the
    training hooks.
    """

    method_name: str = ""

    def __init__(self, config: Any, scene: SceneMeta):
        super().__init__()
        self.config = config
        self.scene = scene

    # -- what every representation implements ---------------------------------------

    def initialize(self, dataset: SceneDataset) -> None:
        """Initialise from training data (called for a fresh run, not on resume)."""

    def render(self, cameras: Cameras, **kwargs: Any) -> RenderOutput:
        raise NotImplementedError

    def loss(self, batch: dict[str, Any], output: RenderOutput) -> dict[str, Tensor]:
        """Named, already weighted scalar losses; the trainer minimises their sum."""
        raise NotImplementedError

    def param_groups(self) -> dict[str, ParamGroup]:
        """One entry per optimizer, keyed by name (gsplat strategies address them so)."""
        return {"all": ParamGroup(list(self.parameters()), lr=1e-3, eps=1e-8)}

    # -- training hooks with defaults -------------------------------------------------

    def train_batch(self, dataset: SceneDataset, step: int, generator: torch.Generator) -> dict:
        """One training batch; default: one random full image with its camera."""
        i = int(torch.randint(len(dataset), (1,), generator=generator))
        return image_batch(dataset, [i])

    def forward(self, batch: dict[str, Any]) -> RenderOutput:
        return self.render(batch["cameras"], step=batch.get("step"))

    def before_backward(self, step: int, output: RenderOutput, optimizers: dict) -> None:
        """Called after the forward pass, before ``backward``."""

    def after_step(self, step: int, output: RenderOutput, optimizers: dict) -> None:
        """Called after the optimizers stepped (densification, pruning, ...)."""

    def finish_training(self, dataset: SceneDataset, progress: bool = True) -> None:
        """Called once the trainer's steps are done, before the final checkpoint: a stage
        that is not a step of the loop (splat4d's rigid parts). It must leave the model
        as it was when interrupted, so that ``--resume`` runs it again."""

    def training_state(self) -> dict[str, Tensor]:
        """Tensors besides parameters that exact resumption needs (strategy statistics)."""
        return {}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        """Inverse of ``training_state``."""

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        """Load a saved ``state_dict``; models whose sizes change in training resize first."""
        self.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        """Facts for the viewer and ``snap3d eval``: primitive count, sizes, ..."""
        return {"parameters": sum(p.numel() for p in self.parameters())}


def image_batch(dataset: SceneDataset, indices: list[int]) -> dict[str, Any]:
    """A batch of full images: cameras, images [B,H,W,3], alphas [B,H,W,1] or None."""
    images = torch.stack([dataset.image(i) for i in indices])
    alphas = [dataset.alpha(i) for i in indices]
    return {
        "cameras": dataset.cameras[indices],
        "image": images,
        "alpha": torch.stack(alphas) if alphas[0] is not None else None,
        "indices": torch.tensor(indices),
    }


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, (Tensor, Cameras)):
            v = v.to(device)
        out[k] = v
    return out
