"""nerfstudio method plugins: ``ns-train snap3d-splat | snap3d-lpgs | snap3d-lightslab``.

The three ``MethodSpecification`` objects at the end are registered under the entry point
group ``nerfstudio.method_configs`` (pyproject.toml), so that nerfstudio's ``ns-train``,
viewer, ``ns-eval`` and ``ns-render`` list and run them. Each wraps the same snap3d
``SceneModel`` that ``snap3d train`` trains; this module only translates between the two:

- cameras: nerfstudio's (OpenGL camera-to-world [N,3,4], ``fx fy cx cy`` [N,1]) become
  snap3d ``Cameras`` (OpenCV camera-to-world [N,4,4], ``Ks`` [N,3,3]);
- data: the dataparser's outputs become a ``SceneDataset`` (cameras, image files, points,
  scene box) that builds and initialises the model; the datamanager's batches (a full
  image and its camera for the splat methods, random rays for the light slab) become the
  batches the model's ``forward`` and ``loss`` take;
- optimisation: one nerfstudio optimizer per entry of the model's ``param_groups()``, with
  its learning rate set before every iteration from our schedule (``ParamGroup.lr_at``),
  and the ``before_backward``/``after_step`` hooks (gsplat strategies, parent trees) run
  where nerfstudio's splatfacto runs its strategy;
- checkpoints: every nerfstudio save also writes a snap3d run in ``<run>/snap3d/``
  (``config.json``, ``cameras.json``, ``checkpoints/step-N/``, and ``scene/transforms.json``:
  the dataparser's cameras and splits in the frame the model was trained in, pointing at
  the original images), so ``snap3d eval|view|render|export <run>/snap3d`` open the run.

nerfstudio's own checkpoints (``nerfstudio_models/step-*.ckpt``) hold the same tensors
under ``_model.scene_model.`` plus the ``SceneMeta`` (``_model._extra_state``), so the
model is rebuilt exactly without reading images.

Only this module imports nerfstudio, and nothing in snap3d imports this module.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from nerfstudio.cameras.cameras import Cameras as NsCameras
from nerfstudio.cameras.cameras import CameraType
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.callbacks import (
    TrainingCallback,
    TrainingCallbackAttributes,
    TrainingCallbackLocation,
)
from nerfstudio.engine.optimizers import AdamOptimizerConfig, Optimizers
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification
from nerfstudio.utils.decorators import check_main_thread
from torch import Tensor

from snap3d import metrics
from snap3d.cameras import Cameras, opengl_to_opencv
from snap3d.data.dataset import ImageSource, SceneDataset
from snap3d.data.points import bounds_from_points
from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_write
from snap3d.representations.base import RenderOutput, SceneMeta, SceneModel
from snap3d.representations.lightslab import LightSlabConfig
from snap3d.representations.lpgs import LPGSConfig
from snap3d.representations.splat import SplatConfig
from snap3d.train.checkpoint import save_checkpoint as save_snap3d_checkpoint
from snap3d.train.checkpoint import save_run_config
from snap3d.train.config import TrainConfig
from snap3d.train.registry import get_method

RUN_SUBDIR = "snap3d"
"""Where a snap3d run is written inside nerfstudio's run directory."""

# -- translation ---------------------------------------------------------------------


def snap3d_cameras(cameras: NsCameras) -> Cameras:
    """nerfstudio cameras (any batch shape, one image size) as snap3d ``Cameras``.

    Perspective cameras become PINHOLE or OPENCV (k1, k2, p1, p2), fisheye ones
    OPENCV_FISHEYE (k1..k4); other nerfstudio camera types are refused.
    """
    cameras = cameras.flatten()
    n = len(cameras)
    c2w = cameras.camera_to_worlds.reshape(n, 3, 4)
    bottom = c2w.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(n, 1, 4)
    sizes = torch.cat([cameras.width, cameras.height], -1).unique(dim=0)
    if len(sizes) != 1:
        raise Snap3dError(
            f"snap3d cameras share one image size; these have {sizes.tolist()}: "
            "resize the images to one size"
        )
    kinds = cameras.camera_type.unique().tolist()
    if kinds == [CameraType.PERSPECTIVE.value]:
        model, order = "OPENCV", (0, 1, 4, 5)  # nerfstudio stores k1 k2 k3 k4 p1 p2
        unsupported = (2, 3)
    elif kinds == [CameraType.FISHEYE.value]:
        model, order, unsupported = "OPENCV_FISHEYE", (0, 1, 2, 3), (4, 5)
    else:
        names = [CameraType(k).name for k in kinds]
        raise Snap3dError(f"snap3d renders perspective or fisheye cameras, not {names}")
    distortion = cameras.distortion_params
    if distortion is not None:
        distortion = distortion.reshape(n, 6)
        if bool(distortion[:, unsupported].any()):
            raise Snap3dError(f"{model} cameras with k3/k4 (or fisheye p1/p2) are not supported")
        distortion = distortion[:, order]
    distorted = distortion is not None and bool(distortion.any())
    width, height = sizes[0].tolist()
    return Cameras(
        camtoworlds=opengl_to_opencv(torch.cat([c2w, bottom], 1)),
        Ks=cameras.get_intrinsics_matrices().reshape(n, 3, 3),
        width=width,
        height=height,
        camera_model=model if distorted else "PINHOLE",
        distortion=distortion if distorted else None,
        times=None if cameras.times is None else cameras.times.reshape(n),
    )


def background_of(outputs: DataparserOutputs) -> Tensor:
    """[3] colour the images are composited on: the dataparser's ``alpha_color`` (nerfstudio
    composites RGBA images on it when it loads them), else white as in ``snap3d train``."""
    if outputs.alpha_color is None:
        return torch.ones(3)
    return outputs.alpha_color.detach().float().cpu().reshape(3)


def scene_dataset(outputs: DataparserOutputs, root: Path, has_alpha: bool) -> SceneDataset:
    """The training split of a nerfstudio dataparser as a ``SceneDataset``.

    The box is that of the point cloud when the dataparser loaded one (as snap3d's own
    loaders do), else the dataparser's scene box. ``has_alpha`` tells whether the
    datamanager's images carry alpha (RGBA files without ``alpha_color``, or masks).
    """
    points = colors = None
    if "points3D_xyz" in outputs.metadata:
        points = outputs.metadata["points3D_xyz"].float().cpu()
        rgb = outputs.metadata.get("points3D_rgb")
        colors = None if rgb is None else rgb.float().cpu() / 255.0
    masks = outputs.mask_filenames or [None] * len(outputs.image_filenames)
    return SceneDataset(
        snap3d_cameras(outputs.cameras),
        [ImageSource(Path(p), None if m is None else Path(m)) for p, m in zip(outputs.image_filenames, masks, strict=True)],
        split="train",
        bounds=bounds_from_points(points) if points is not None else outputs.scene_box.aabb.float().cpu(),
        root=root,
        layout="nerfstudio dataparser",
        background=background_of(outputs),
        points=points,
        point_colors=colors,
        has_alpha=has_alpha,
    )  # fmt: skip


def transforms_json(splits: dict[str, DataparserOutputs]) -> dict:
    """A nerfstudio ``transforms.json`` (read by ``snap3d.data``) of the dataparser's splits:
    its cameras in the frame it hands the model, absolute image paths, split lists."""
    frames: dict[str, dict] = {}
    lists: dict[str, list[str]] = {}
    for split, outputs in splits.items():
        cams = outputs.cameras.flatten()
        masks = outputs.mask_filenames or [None] * len(cams)
        lists[f"{split}_filenames"] = []
        for i, (image, mask) in enumerate(zip(outputs.image_filenames, masks, strict=True)):
            path = str(Path(image).resolve())
            lists[f"{split}_filenames"].append(path)
            c2w = cams.camera_to_worlds[i].reshape(3, 4).tolist() + [[0.0, 0.0, 0.0, 1.0]]
            frame = {
                "file_path": path,
                "transform_matrix": c2w,
                "fl_x": float(cams.fx[i]),
                "fl_y": float(cams.fy[i]),
                "cx": float(cams.cx[i]),
                "cy": float(cams.cy[i]),
                "w": int(cams.width[i]),
                "h": int(cams.height[i]),
            }
            if cams.distortion_params is not None:
                k1, k2, k3, k4, p1, p2 = cams.distortion_params[i].tolist()
                frame.update(k1=k1, k2=k2, k3=k3, k4=k4, p1=p1, p2=p2)
            if mask is not None:
                frame["mask_path"] = str(Path(mask).resolve())
            frames[path] = frame
    kinds = splits["train"].cameras.camera_type.unique().tolist()
    model = "OPENCV_FISHEYE" if kinds == [CameraType.FISHEYE.value] else "OPENCV"
    return {"camera_model": model, "frames": list(frames.values()), **lists}


def split_image(
    image: Tensor, mask: Tensor | None, background: Tensor
) -> tuple[Tensor, Tensor | None]:
    """A datamanager image [...,3|4] (uint8 or float) as snap3d's (rgb over ``background``
    [...,3], alpha [...,1] or None). A mask stands for alpha, as in ``snap3d.data``."""
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    alpha = image[..., 3:] if image.shape[-1] == 4 else None
    if mask is not None:
        alpha = mask.to(image).reshape(*image.shape[:-1], 1)
    rgb = image[..., :3]
    if alpha is not None:
        rgb = rgb * alpha + background.to(rgb) * (1 - alpha)
    return rgb, alpha


# -- model ---------------------------------------------------------------------------


@dataclass
class Snap3dModelConfig(ModelConfig):
    """nerfstudio's model config for one snap3d method; subclasses mix in the method's own
    config dataclass, so its fields read ``--pipeline.model.FIELD`` on the command line."""

    _target: type = field(default_factory=lambda: Snap3dModel)
    enable_collider: bool = False
    method: ClassVar[str] = ""

    def snap3d_config(self) -> Any:
        """The method's own config dataclass with this config's values."""
        cls = get_method(self.method).config_cls
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})


@dataclass
class SplatModelConfig(Snap3dModelConfig, SplatConfig):
    """snap3d 3D Gaussian splatting (gsplat strategies)."""

    method: ClassVar[str] = "splat"


@dataclass
class LPGSModelConfig(Snap3dModelConfig, LPGSConfig):
    """snap3d parent/child splats (LPGS)."""

    method: ClassVar[str] = "lpgs"


@dataclass
class LightSlabModelConfig(Snap3dModelConfig, LightSlabConfig):
    """snap3d light-slab light field, trained on nerfstudio's ray batches (their size is
    ``--pipeline.datamanager.train-num-rays-per-batch``; ``rays-per-batch`` is unused)."""

    method: ClassVar[str] = "lightslab"

    def __post_init__(self) -> None:
        # Both need whole images or the teacher's pseudo-views, which only the batches
        # of `snap3d train` provide; ns-train samples rays from the images.
        if self.decoder != "mlp" or self.teacher is not None:
            raise Snap3dError(
                "under ns-train the light slab trains its mlp decoder on ray batches; "
                "train the conv decoder or with a teacher with `snap3d train lightslab`"
            )


class Snap3dModel(Model):
    """A nerfstudio ``Model`` holding a snap3d ``SceneModel`` (``scene_model``).

    The pipeline builds the scene model from the dataparser's outputs (``attach``); the
    training batches reach it already translated (``forward_batch``).
    """

    config: Snap3dModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.scene_model: SceneModel | None = None
        self.step = 0
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._output: RenderOutput | None = None

    def attach(self, scene: SceneMeta, dataset: SceneDataset | None) -> None:
        """Build the snap3d model for ``scene``, initialised from ``dataset`` when given
        (a fresh run) and left to a checkpoint otherwise."""
        spec = get_method(self.config.method)
        model = spec.model_cls(self.config.snap3d_config(), scene)
        if dataset is not None:
            model.initialize(dataset)
        self.scene_model = model.to(self.device)

    @property
    def background(self) -> Tensor:
        """[3] the scene's background colour, on the model's device."""
        return torch.tensor(self.scene_model.scene.background, device=self.device)

    # -- rendering: viewer, ns-eval, ns-render ---------------------------------------

    def get_outputs(self, ray_bundle: RayBundle | NsCameras) -> dict[str, Tensor]:
        if not isinstance(ray_bundle, NsCameras):
            raise NotImplementedError("snap3d models render cameras; rays go through forward_batch")
        out = self.scene_model.render(snap3d_cameras(ray_bundle).to(self.device))
        outputs = {"rgb": out.rgb[0]}
        if out.alpha is not None:
            outputs["accumulation"] = out.alpha[0]
        if out.depth is not None:
            outputs["depth"] = out.depth[0]
        return outputs

    @torch.no_grad()
    def get_outputs_for_camera(self, camera: NsCameras, obb_box: Any = None) -> dict[str, Tensor]:
        return self.get_outputs(camera.to(self.device))

    def get_image_metrics_and_images(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[dict[str, float], dict[str, Tensor]]:
        gt, _ = split_image(batch["image"].to(self.device), batch.get("mask"), self.background)
        pred = outputs["rgb"].clamp(0, 1)
        result = {
            "psnr": float(metrics.psnr(pred, gt)),
            "ssim": float(metrics.ssim(pred[None], gt[None])[0]),
        }
        lpips = metrics.lpips(pred[None].cpu(), gt[None].cpu())
        if lpips is not None:
            result["lpips"] = float(lpips[0])
        return result, {"img": torch.cat([gt, pred], dim=1)}

    # -- training ----------------------------------------------------------------------

    def get_param_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {name: g.params for name, g in self.scene_model.param_groups().items()}

    def snap3d_batch(self, inputs: RayBundle | NsCameras, batch: dict[str, Any]) -> dict[str, Any]:
        """A datamanager batch as the model's: an image with its camera, or rays."""
        rgb, alpha = split_image(batch["image"].to(self.device), batch.get("mask"), self.background)
        if isinstance(inputs, NsCameras):
            return {
                "cameras": snap3d_cameras(inputs).to(self.device),
                "image": rgb[None],
                "alpha": None if alpha is None else alpha[None],
                "indices": torch.as_tensor([batch["image_idx"]]).reshape(-1),
                "step": self.step,
            }
        return {
            "origins": inputs.origins.to(self.device),
            "directions": inputs.directions.to(self.device),
            "rgb": rgb,
            "alpha": alpha,
            "step": self.step,
        }

    def forward_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The model's forward pass on a translated batch, with its hook before backward
        (in training). The outputs carry the batch for ``get_loss_dict``."""
        output = self.scene_model(batch)
        if self.training:
            self.scene_model.before_backward(self.step, output, self._optimizers)
            self._output = output
        return {"rgb": output.rgb, "snap3d_output": output, "snap3d_batch": batch}

    def get_metrics_dict(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        ours = outputs["snap3d_batch"]
        if ours.get("render_background") is not None:
            return {}  # rendered over a random background: not comparable with the image
        target = ours["image"] if "image" in ours else ours["rgb"]
        pred = outputs["rgb"].detach()
        return {"psnr": metrics.psnr(pred.reshape(-1, 1, 3), target.reshape(-1, 1, 3))}

    def get_loss_dict(
        self, outputs: dict[str, Any], batch: dict[str, Any], metrics_dict=None
    ) -> dict[str, Tensor]:
        return self.scene_model.loss(outputs["snap3d_batch"], outputs["snap3d_output"])

    def get_training_callbacks(
        self, attributes: TrainingCallbackAttributes
    ) -> list[TrainingCallback]:
        """Before each iteration: the step and our learning rates; after it: ``after_step``."""
        optimizers = attributes.optimizers.optimizers
        self._optimizers = optimizers
        self.scene_model.max_steps = max_steps = attributes.trainer.config.max_num_iterations
        groups = self.scene_model.param_groups()

        def before(step: int) -> None:
            self.step = step
            for name, opt in optimizers.items():
                for group in opt.param_groups:
                    group["lr"] = groups[name].lr_at(step, max_steps)

        def after(step: int) -> None:
            self.scene_model.after_step(step, self._output, optimizers)
            self._output = None

        return [
            TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], before),
            TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], after),
        ]

    # -- checkpoints -------------------------------------------------------------------

    def get_extra_state(self) -> dict:
        return {"scene": self.scene_model.scene.to_dict()}

    def load_state_dict(
        self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False
    ):
        """Rebuild the scene model for the saved ``SceneMeta`` and load its tensors (the
        models resize their parameters to the checkpoint's)."""
        extra = state_dict.get("_extra_state")
        scene = SceneMeta.from_dict(extra["scene"]) if extra else self.scene_model.scene
        self.attach(scene, None)
        prefix = "scene_model."
        self.scene_model.load_checkpoint_state(
            {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        )
        return torch.nn.modules.module._IncompatibleKeys([], [])


# -- pipeline and trainer ------------------------------------------------------------


@dataclass
class Snap3dPipelineConfig(VanillaPipelineConfig):
    _target: type = field(default_factory=lambda: Snap3dPipeline)


class Snap3dPipeline(VanillaPipeline):
    """nerfstudio's pipeline, building the snap3d model from the training split and
    translating the datamanager's batches for it."""

    model: Snap3dModel

    def __init__(
        self,
        config: Snap3dPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Any = None,
    ):
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        datamanager = self.datamanager
        outputs = datamanager.train_dataparser_outputs
        # ns-train sets up with "val"; ns-eval, ns-render and the viewer ("test",
        # "inference") load a checkpoint, which holds the SceneMeta: no image is read.
        fresh = test_mode == "val"
        has_alpha = fresh and (
            outputs.mask_filenames is not None
            or datamanager.train_dataset.get_image_float32(0).shape[-1] == 4
        )
        dataset = scene_dataset(outputs, Path(datamanager.config.data), has_alpha)
        self.model.attach(SceneMeta.from_dataset(dataset), dataset if fresh else None)

    def _losses(self, inputs: RayBundle | NsCameras, batch: dict) -> tuple[dict, dict, dict]:
        model = self.model
        outputs = model.forward_batch(model.snap3d_batch(inputs, batch))
        metrics_dict = model.get_metrics_dict(outputs, batch)
        return outputs, model.get_loss_dict(outputs, batch, metrics_dict), metrics_dict

    def get_train_loss_dict(self, step: int) -> tuple[dict, dict, dict]:
        return self._losses(*self.datamanager.next_train(step))

    @torch.no_grad()
    def get_eval_loss_dict(self, step: int) -> tuple[dict, dict, dict]:
        self.eval()
        result = self._losses(*self.datamanager.next_eval(step))
        self.train()
        return result


@dataclass
class AdamConfig(AdamOptimizerConfig):
    """Adam with betas (nerfstudio's config keeps torch's default)."""

    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Snap3dTrainerConfig(TrainerConfig):
    _target: type = field(default_factory=lambda: Snap3dTrainer)


class Snap3dTrainer(Trainer):
    """nerfstudio's trainer with one optimizer per snap3d parameter group (their settings
    come from the model's config, not from ``--optimizers``), writing a snap3d run in
    ``<run>/snap3d`` beside its own checkpoints."""

    pipeline: Snap3dPipeline

    @property
    def run_dir(self) -> Path:
        return self.base_dir / RUN_SUBDIR

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        super().setup(test_mode)
        if self.local_rank == 0:
            self.write_run_config()

    def setup_optimizers(self) -> Optimizers:
        groups = self.pipeline.model.scene_model.param_groups()
        config = {
            name: {
                "optimizer": AdamConfig(
                    lr=g.lr, eps=g.eps, betas=g.betas, weight_decay=g.weight_decay
                ),
                "scheduler": None,  # the model sets the learning rates (get_training_callbacks)
            }
            for name, g in groups.items()
        }
        return Optimizers(config, self.pipeline.get_param_groups())

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
        if self.config.load_dir is not None or self.config.load_checkpoint is not None:
            # Loading resized the parameters: new optimizers over them, with the moments
            # just loaded into the old ones.
            states = {name: opt.state_dict() for name, opt in self.optimizers.optimizers.items()}
            self.optimizers = self.setup_optimizers()
            self.optimizers.load_optimizers(states)

    def write_run_config(self) -> None:
        """``config.json``, ``cameras.json`` and ``scene/transforms.json`` of the snap3d run."""
        model = self.pipeline.model
        datamanager = self.pipeline.datamanager
        scene = model.scene_model.scene
        named = {(1.0, 1.0, 1.0): "white", (0.0, 0.0, 0.0): "black"}
        train = TrainConfig(
            data=self.run_dir / "scene",
            output=self.run_dir,
            max_steps=self.config.max_num_iterations,
            device=self.config.machine.device_type,
            seed=self.config.machine.seed,
            background=named.get(tuple(scene.background), scene.background),
            save_every=self.config.steps_per_save,
            keep_checkpoints=1 if self.config.save_only_latest_checkpoint else 0,
            progress=False,
        )
        save_run_config(
            self.run_dir, model.config.method, model.config.snap3d_config(), train, scene
        )
        train_outputs = datamanager.train_dataparser_outputs
        with atomic_write(self.run_dir / "cameras.json", "w") as f:
            json.dump(snap3d_cameras(train_outputs.cameras).to_dict(), f)
        splits = {"train": train_outputs}
        for split in ("val", "test"):
            splits[split] = datamanager.dataparser.get_dataparser_outputs(split=split)
        (self.run_dir / "scene").mkdir(exist_ok=True)
        with atomic_write(self.run_dir / "scene" / "transforms.json", "w") as f:
            json.dump(transforms_json(splits), f)

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        super().save_checkpoint(step)
        # nerfstudio numbers a checkpoint by its last iteration, snap3d by the steps done.
        save_snap3d_checkpoint(
            self.run_dir,
            step + 1,
            self.pipeline.model.scene_model,
            self.optimizers.optimizers,
            keep=1 if self.config.save_only_latest_checkpoint else 0,
        )


# -- the registered methods ----------------------------------------------------------


def _method(model: Snap3dModelConfig, datamanager: Any) -> MethodSpecification:
    """ns-train's defaults for a snap3d method (splatfacto's evaluation and save steps; the
    method's own number of steps on CUDA)."""
    return MethodSpecification(
        config=Snap3dTrainerConfig(
            method_name=f"snap3d-{model.method}",
            max_num_iterations=model.default_max_steps("cuda"),
            steps_per_eval_batch=0,
            steps_per_eval_image=100,
            steps_per_eval_all_images=1000,
            steps_per_save=2000,
            mixed_precision=False,
            pipeline=Snap3dPipelineConfig(datamanager=datamanager, model=model),
            viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
            vis="viewer",
        ),
        description=f"snap3d: {get_method(model.method).description}",
    )


def _full_images() -> FullImageDatamanagerConfig:
    return FullImageDatamanagerConfig(
        dataparser=NerfstudioDataParserConfig(load_3D_points=True), cache_images_type="uint8"
    )


splat = _method(SplatModelConfig(), _full_images())
lpgs = _method(LPGSModelConfig(), _full_images())
lightslab = _method(
    LightSlabModelConfig(),
    VanillaDataManagerConfig(
        dataparser=NerfstudioDataParserConfig(load_3D_points=True),
        train_num_rays_per_batch=LightSlabConfig.rays_per_batch,
        eval_num_rays_per_batch=LightSlabConfig.rays_per_batch,
    ),
)
