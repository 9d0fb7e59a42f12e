"""3D Gaussian splats (3DGS), trained with gsplat's densification strategies.

Parameters follow gsplat's simple trainer: ``means [N,3]``, ``quats [N,4]`` (w,x,y,z),
``scales [N,3]`` (log), ``opacities [N]`` (logits), ``sh0 [N,1,3]``, ``shN [N,K,3]``.
Rendering goes through ``snap3d.render.rasterize_gaussians`` (torch backend on CPU and
MPS, gsplat's kernels on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snap3d.cameras import Cameras
from snap3d.data.dataset import SceneDataset
from snap3d.errors import Snap3dError
from snap3d.io import SplatData, load_splats
from snap3d.metrics import ssim_loss
from snap3d.render import rasterize_gaussians
from snap3d.representations.base import ParamGroup, RenderOutput, SceneMeta, SceneModel
from snap3d.representations.strategies import enable_cpu_fallbacks, strategy_info
from snap3d.train.registry import register_method

SH_C0 = 0.28209479177387814


def rgb_to_sh(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


# Schedules as gsplat's trainer uses them on a GPU, and a shorter one that converges in
# minutes on a CPU. Step counts scale with --max-steps (like gsplat's steps_scaler).
SCHEDULES = {
    "gpu": {"max_steps": 30_000, "refine_start": 500, "refine_stop": 15_000, "reset_every": 3000, "sh_interval": 1000},
    "cpu": {"max_steps": 5_000, "refine_start": 250, "refine_stop": 3_500, "reset_every": 3000, "sh_interval": 500},
}  # fmt: skip


@dataclass
class SplatConfig:
    """3D Gaussian splatting."""

    schedule: Literal["auto", "cpu", "gpu"] = "auto"
    """Step schedule: gsplat's 30k-step one on CUDA, a 5k-step one elsewhere (auto)."""
    init: Literal["auto", "points", "random", "file"] = "auto"
    """auto: the dataset's point cloud when it has one, else random in the scene box."""
    init_file: Path | None = None
    """A .ply/.spz/.splat to start from (fine-tuning a splat made elsewhere)."""
    init_num_points: int = 5_000
    """Number of random initial Gaussians."""
    init_opacity: float = 0.1
    init_scale: float = 1.0
    """Initial scale as a multiple of the mean distance to the 3 nearest neighbours."""
    sh_degree: int = 3
    ssim_lambda: float = 0.2
    """Weight of D-SSIM in the photometric loss (1 - w for L1)."""
    train_background: Literal["auto", "white", "black", "random"] = "auto"
    """Background behind the splats in training. For RGBA data, random trains against random
    colours so that the splats learn true transparency; auto means random for RGBA data
    and the dataset's colour otherwise. Evaluation uses the dataset's colour."""
    strategy: Literal["default", "mcmc"] = "default"
    """gsplat densification: DefaultStrategy (split/clone/prune) or MCMCStrategy."""
    grow_grad2d: float = 0.0002
    prune_opa: float = 0.005
    refine_every: int = 100
    absgrad: bool = False
    mcmc_cap_max: int = 200_000
    mcmc_noise_lr: float = 5e5
    means_lr: float = 1.6e-4
    scales_lr: float = 5e-3
    opacities_lr: float = 5e-2
    quats_lr: float = 1e-3
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    eps2d: float = 0.3
    """Blur added to each projected Gaussian's 2D covariance, in pixels² (gsplat's
    ``eps2d``): no splat renders sharper than a Gaussian of this variance."""
    backend: Literal["auto", "torch", "gsplat"] = "auto"
    opacity_reg: float = 0.0
    """L1 on opacities (MCMC uses 0.01)."""
    scale_reg: float = 0.0
    """L1 on scales (MCMC uses 0.01)."""
    alpha_weight: float = 0.0
    """L1 between the rendered opacity and the images' alpha channel (RGBA data only; 0:
    off). A random background already asks for the right opacity, but only as far as the
    background's colour differs from the surface's. splat4d on the bundled dynamic scene
    (5000 steps, seed 0), 1.0 against 0: 25.10 against 24.67 dB test PSNR, but a
    trajectory error of 6.1% against 5.0% of the radius; seed 1, 25.01 dB / 5.7% (the
    defaults gave 25.19 / 6.0% in an earlier session): no gain beyond the spread."""

    def resolve_schedule(self, device: torch.device | str) -> str:
        if self.schedule != "auto":
            return self.schedule
        return "gpu" if torch.device(device).type == "cuda" else "cpu"

    def default_max_steps(self, device: torch.device | str) -> int:
        return SCHEDULES[self.resolve_schedule(device)]["max_steps"]


def knn_mean_distance(points: Tensor, k: int = 3, chunk: int = 4096) -> Tensor:
    """[N] mean distance of each point to its k nearest other points (chunked)."""
    n = points.shape[0]
    if n <= 1:
        return torch.ones(n, device=points.device)
    k = min(k, n - 1)
    out = torch.empty(n, device=points.device)
    for s in range(0, n, chunk):
        d = torch.cdist(points[s : s + chunk], points)
        out[s : s + chunk] = d.topk(k + 1, largest=False).values[:, 1:].mean(-1)
    return out


def render_splats(
    cameras: Cameras,
    means: Tensor,
    quats: Tensor,
    log_scales: Tensor,
    opacity_logits: Tensor,
    sh: Tensor,
    *,
    config: Any,
    sh_degree: int,
    background: Tensor,
    render_mode: str = "RGB+ED",
    absgrad: bool = False,
) -> RenderOutput:
    """Render Gaussians stored as splat parameters (log scales, opacity logits, SH [N,K,3])
    with the rasterizer settings of ``config`` (its ``rasterize_mode``, ``backend`` and
    ``eps2d`` where it has one);
    ``background`` is [3] or [N,3]."""
    if cameras.camera_model != "PINHOLE" and cameras.distortion is not None:
        raise Snap3dError(
            "the splat rasterizer renders pinhole cameras; undistort the images first "
            f"(got {cameras.camera_model} with distortion)"
        )
    bgs = background.to(means).expand(len(cameras), 3) if background.ndim == 1 else background
    colors, alphas, meta = rasterize_gaussians(
        means,
        quats,
        torch.exp(log_scales),
        torch.sigmoid(opacity_logits),
        sh,
        cameras.viewmats,
        cameras.Ks,
        cameras.width,
        cameras.height,
        sh_degree=sh_degree,
        backgrounds=bgs,
        render_mode=render_mode,
        rasterize_mode=config.rasterize_mode,
        absgrad=absgrad,
        backend=config.backend,
        **({"eps2d": config.eps2d} if hasattr(config, "eps2d") else {}),
    )
    depth = colors[..., 3:4] if colors.shape[-1] == 4 else None
    return RenderOutput(rgb=colors[..., :3], alpha=alphas, depth=depth, extras=meta)


class SplatModel(SceneModel):
    """A set of 3D Gaussians and the strategy that grows and prunes them."""

    method_name = "splat"

    def __init__(self, config: SplatConfig, scene: SceneMeta):
        super().__init__(config, scene)
        self.max_steps = config.default_max_steps("cpu")
        self.splats = nn.ParameterDict(_empty_params(config.sh_degree))
        self._strategy = None
        self._strategy_state: dict[str, Any] | None = None
        self.register_buffer("background", torch.tensor(scene.background, dtype=torch.float32))

    # -- construction -----------------------------------------------------------------

    def set_splats(self, splats: SplatData) -> None:
        """Replace all Gaussians (resizing parameters), keeping the SH degree of config."""
        device = self.background.device
        degree_k = (self.config.sh_degree + 1) ** 2 - 1
        shN = splats.shN
        if shN.shape[1] < degree_k:
            shN = torch.cat([shN, shN.new_zeros(shN.shape[0], degree_k - shN.shape[1], 3)], 1)
        values = {
            "means": splats.means,
            "quats": splats.quats,
            "scales": splats.scales,
            "opacities": splats.opacities,
            "sh0": splats.sh0,
            "shN": shN[:, :degree_k],
        }
        for name, value in values.items():
            self.splats[name] = nn.Parameter(value.detach().float().to(device).contiguous())

    def to_splats(self) -> SplatData:
        p = {k: v.detach() for k, v in self.splats.items()}
        return SplatData(p["means"], p["quats"], p["scales"], p["opacities"], p["sh0"], p["shN"])

    def initialize(self, dataset: SceneDataset) -> None:
        cfg = self.config
        mode = cfg.init
        if mode == "auto":
            mode = (
                "file" if cfg.init_file else ("points" if dataset.points is not None else "random")
            )
        g = torch.Generator().manual_seed(0)
        if mode == "file":
            if cfg.init_file is None:
                raise Snap3dError("--init file needs --init-file PATH")
            self.set_splats(load_splats(cfg.init_file))
            return
        if mode == "points":
            if dataset.points is None:
                raise Snap3dError("--init points, but the dataset has no point cloud", dataset.root)
            points = dataset.points.float()
            colors = (
                dataset.point_colors.float()
                if dataset.point_colors is not None
                else torch.rand(points.shape[0], 3, generator=g)
            )
        else:
            lo, hi = dataset.bounds[0], dataset.bounds[1]
            points = lo + (hi - lo) * torch.rand(cfg.init_num_points, 3, generator=g)
            colors = torch.rand(cfg.init_num_points, 3, generator=g)
        n = points.shape[0]
        dist = knn_mean_distance(points).clamp_min(1e-7)
        k = (cfg.sh_degree + 1) ** 2 - 1
        self.set_splats(
            SplatData(
                means=points,
                quats=F.normalize(torch.randn(n, 4, generator=g), dim=-1),
                scales=torch.log(dist * cfg.init_scale)[:, None].repeat(1, 3),
                opacities=torch.logit(torch.full((n,), cfg.init_opacity)),
                sh0=rgb_to_sh(colors)[:, None, :],
                shN=torch.zeros(n, k, 3),
            )
        )

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        for name in list(self.splats.keys()):
            key = f"splats.{name}"
            if key not in state:
                raise Snap3dError(f"checkpoint lacks {key}")
            self.splats[name] = nn.Parameter(torch.zeros_like(state[key]))
        self.load_state_dict(state)

    # -- rendering --------------------------------------------------------------------

    @property
    def num_gaussians(self) -> int:
        return self.splats["means"].shape[0]

    def sh_degree_at(self, step: int | None) -> int:
        if step is None:
            return self.config.sh_degree
        interval = self._schedule()["sh_interval"]
        return min(step // max(interval, 1), self.config.sh_degree)

    def render(
        self,
        cameras: Cameras,
        step: int | None = None,
        background: Tensor | None = None,
        render_mode: str = "RGB+ED",
        **kwargs: Any,
    ) -> RenderOutput:
        """Render ``cameras`` ([N,H,W,3] images). ``step`` sets the SH degree ramp."""
        p = self.splats
        return render_splats(
            cameras,
            p["means"],
            p["quats"],
            p["scales"],
            p["opacities"],
            torch.cat([p["sh0"], p["shN"]], 1),
            config=self.config,
            sh_degree=self.sh_degree_at(step),
            background=self.background if background is None else background,
            render_mode=render_mode,
            absgrad=self.config.absgrad and self.training,
        )

    # -- training ---------------------------------------------------------------------

    def _schedule(self) -> dict[str, int]:
        name = self.config.resolve_schedule(self.splats["means"].device)
        base = SCHEDULES[name]
        scale = self.max_steps / base["max_steps"]
        return {k: max(1, int(round(v * scale))) for k, v in base.items()}

    def _train_background(self, batch: dict[str, Any]) -> Tensor | None:
        """Background of a training render of RGBA data; None keeps the dataset's."""
        mode = self.config.train_background
        if batch.get("alpha") is None or mode == "auto" and not self.scene.has_alpha:
            return None
        device = self.background.device
        if mode in ("auto", "random"):
            return torch.rand(3, device=device)
        return torch.full((3,), 1.0 if mode == "white" else 0.0, device=device)

    def forward(self, batch: dict[str, Any]) -> RenderOutput:
        batch["render_background"] = bg = self._train_background(batch)
        return self.render(batch["cameras"], step=batch.get("step"), background=bg)

    def loss(self, batch: dict[str, Any], output: RenderOutput) -> dict[str, Tensor]:
        target = batch["image"]
        bg = batch.get("render_background")
        if bg is not None and batch.get("alpha") is not None:
            # images arrive composited on the dataset background: swap it for bg.
            a = batch["alpha"]
            target = target + (bg - self.background) * (1 - a)
        pred = output.rgb
        w = self.config.ssim_lambda
        losses = {
            "l1": (1 - w) * (pred - target).abs().mean(),
            "dssim": w * ssim_loss(pred, target),
        }
        if self.config.alpha_weight > 0 and batch.get("alpha") is not None:
            alpha_error = (output.alpha - batch["alpha"]).abs().mean()
            losses["alpha"] = self.config.alpha_weight * alpha_error
        if self.config.opacity_reg > 0:
            losses["opacity_reg"] = (
                self.config.opacity_reg * torch.sigmoid(self.splats["opacities"]).mean()
            )
        if self.config.scale_reg > 0:
            losses["scale_reg"] = self.config.scale_reg * torch.exp(self.splats["scales"]).mean()
        return losses

    def param_groups(self) -> dict[str, ParamGroup]:
        cfg = self.config
        s = self.scene.camera_extent
        p = self.splats
        return {
            "means": ParamGroup([p["means"]], cfg.means_lr * s, lr_final=cfg.means_lr * s * 0.01),
            "scales": ParamGroup([p["scales"]], cfg.scales_lr),
            "quats": ParamGroup([p["quats"]], cfg.quats_lr),
            "opacities": ParamGroup([p["opacities"]], cfg.opacities_lr),
            "sh0": ParamGroup([p["sh0"]], cfg.sh0_lr),
            "shN": ParamGroup([p["shN"]], cfg.shN_lr),
        }

    def strategy(self):
        """The gsplat strategy object, built from the config and the step schedule."""
        if self._strategy is None:
            from gsplat.strategy import DefaultStrategy, MCMCStrategy

            enable_cpu_fallbacks()
            sched = self._schedule()
            cfg = self.config
            if cfg.strategy == "mcmc":
                self._strategy = MCMCStrategy(
                    cap_max=cfg.mcmc_cap_max,
                    noise_lr=cfg.mcmc_noise_lr,
                    refine_start_iter=sched["refine_start"],
                    refine_stop_iter=sched["refine_stop"],
                    refine_every=cfg.refine_every,
                )
                self._strategy_state = self._strategy.initialize_state()
            else:
                self._strategy = DefaultStrategy(
                    prune_opa=cfg.prune_opa,
                    grow_grad2d=cfg.grow_grad2d,
                    refine_start_iter=sched["refine_start"],
                    refine_stop_iter=sched["refine_stop"],
                    reset_every=sched["reset_every"],
                    refine_every=cfg.refine_every,
                    absgrad=cfg.absgrad,
                )
                self._strategy_state = self._strategy.initialize_state(
                    scene_scale=self.scene.camera_extent
                )
        return self._strategy

    def before_backward(self, step: int, output: RenderOutput, optimizers: dict) -> None:
        strategy = self.strategy()
        if hasattr(strategy, "step_pre_backward"):
            strategy.step_pre_backward(
                self.splats, optimizers, self._strategy_state, step, strategy_info(output.extras)
            )

    def after_step(self, step: int, output: RenderOutput, optimizers: dict) -> None:
        strategy = self.strategy()
        info = strategy_info(output.extras)
        if self.config.strategy == "mcmc":
            lr = optimizers["means"].param_groups[0]["lr"]
            strategy.step_post_backward(
                self.splats, optimizers, self._strategy_state, step, info, lr=lr
            )
        else:
            strategy.step_post_backward(
                self.splats, optimizers, self._strategy_state, step, info, packed=False
            )

    def training_state(self) -> dict[str, Tensor]:
        self.strategy()
        return {k: v for k, v in self._strategy_state.items() if isinstance(v, Tensor)}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        self.strategy()
        for k, v in state.items():
            self._strategy_state[k] = v.to(self.background.device)

    def describe(self) -> dict[str, Any]:
        return {"gaussians": self.num_gaussians, "sh_degree": self.config.sh_degree}


def _empty_params(sh_degree: int) -> dict[str, nn.Parameter]:
    k = (sh_degree + 1) ** 2 - 1
    return {
        "means": nn.Parameter(torch.zeros(0, 3)),
        "quats": nn.Parameter(torch.zeros(0, 4)),
        "scales": nn.Parameter(torch.zeros(0, 3)),
        "opacities": nn.Parameter(torch.zeros(0)),
        "sh0": nn.Parameter(torch.zeros(0, 1, 3)),
        "shN": nn.Parameter(torch.zeros(0, k, 3)),
    }


def splat_model_from_file(path: Path, sh_degree: int | None = None) -> SplatModel:
    """A SplatModel holding the Gaussians of a .ply/.spz/.splat file made anywhere.

    The scene box is the splats' robust extent; the background is white.
    """
    splats = load_splats(path)
    means = splats.means
    lo = torch.quantile(means, 0.02, dim=0) if means.shape[0] > 0 else torch.full((3,), -1.0)
    hi = torch.quantile(means, 0.98, dim=0) if means.shape[0] > 0 else torch.full((3,), 1.0)
    extent = float((hi - lo).norm()) / 2
    scene = SceneMeta(
        bounds=[lo.tolist(), hi.tolist()],
        camera_extent=max(extent, 1e-3) * 2,
        background=[1.0, 1.0, 1.0],
    )
    config = SplatConfig(sh_degree=splats.sh_degree if sh_degree is None else sh_degree)
    model = SplatModel(config, scene)
    model.set_splats(splats)
    return model.eval()


register_method(
    "splat", SplatConfig, SplatModel, "3D Gaussian splatting (gsplat strategies, every device)"
)
