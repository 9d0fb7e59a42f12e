"""Parent/child splats (LPGS, arXiv 2406.19434): only parents are stored.

A parent is a position, a log size, an opacity logit and a short feature vector (``D =
parent_features`` numbers). Its K children, ordinary 3D Gaussians, are decoded by small
MLPs shared by the whole scene from a multi-resolution hash-grid feature at the parent
(``snap3d.representations.hashgrid``) and the parent's features. What a file holds is
therefore the parents, the hash tables and the MLP weights (``snap3d.io.lpgs``); a viewer
decodes the children once and renders them as splats.

Decoding parent p (mean m, log size s, opacity logit a, features z) into child k, with
the hash grid over the scene box ``[lo, hi]`` (model buffer ``box``) and the fixed child
pattern ``pattern[k]`` (K points on a sphere)::

    f     = [hash(clamp((m - lo) / (hi - lo), 0, 1)), z]              [L*F + D]
    h     = relu(W_in f + b_in)                                       [H]
    h     = relu(W_i h + b_i)   for each hidden layer i               [H]
    o     = W_out relu(h + child_embedding[k]) + b_out                [11 + 3 (d+1)^2]
    mean     = m + exp(s) * (pattern[k] + offset_range * tanh(o[0:3]))
    scales   = s + o[3:6]                      (log, as SplatData)
    quat     = o[6:10] + (1, 0, 0, 0)          (w, x, y, z; the rasterizer normalises)
    opacity  = a + o[10]                       (logit)
    SH       = o[11:] as [(d+1)^2, 3]          (sh0 first, then shN)

Why the parent carries features: the parents' hash features are read at the parents only,
so a table must hold about a feature per parent anyway, and one stored per parent costs
fewer bytes than the table entries around it (8 corners per level, collisions). The hash
grid adds the smooth, shared part of the field: a parent promoted from a child starts with
sensible children before its own features are trained.

Training renders the children with ``rasterize_gaussians`` and manages the parent tree in
``after_step``: parents whose children are all transparent (or never seen) are pruned,
children with large screen-space gradients or high image error at their centres are
promoted to parents, up to the parent budget. ``init_from`` starts from a trained ``splat``
run: its Gaussians are split into clusters of K by a k-d tree, one parent each, and the
heads distilled to reproduce them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snap3d.cameras import Cameras
from snap3d.errors import Snap3dError
from snap3d.io import SH_C0, SplatData
from snap3d.metrics import ssim_loss
from snap3d.representations.base import ParamGroup, RenderOutput, SceneMeta, SceneModel
from snap3d.representations.hashgrid import HashBackend, HashGrid, per_level_scale_for
from snap3d.representations.splat import SCHEDULES, knn_mean_distance, render_splats
from snap3d.representations.strategies import covariances_torch
from snap3d.train.registry import register_method

if TYPE_CHECKING:
    from snap3d.data.dataset import SceneDataset


@dataclass
class LPGSConfig:
    """Parent/child splats (LPGS): stored parents, children decoded by shared MLPs."""

    init_from: Path | None = None
    """A trained ``splat`` run directory: parents are clustered from its Gaussians and the
    heads distilled to reproduce them before photometric training."""
    schedule: Literal["auto", "cpu", "gpu"] = "auto"
    """Step schedule (the splat method's): 30k steps on CUDA, 5k elsewhere (auto)."""
    children: int = 8
    """K, children decoded per parent."""
    sh_degree: int = 1
    """SH degree of the children's colours."""
    init_num_parents: int = 2000
    """Random initial parents in the scene box, when the data has no point cloud."""
    init_scale: float = 1.0
    """Initial parent size as a multiple of the mean distance to the 3 nearest parents."""
    init_opacity: float = 0.1
    child_scale: float = 0.5
    """Initial child scale as a fraction of its parent's size."""
    pattern_radius: float = 0.5
    """Children start on a Fibonacci sphere of this radius (in parent sizes)."""
    offset_range: float = 2.0
    """Children move at most this many parent sizes from their pattern point."""
    hash_levels: int = 8
    hash_features: int = 2
    hash_log2_size: int = 13
    hash_base_resolution: int = 8
    hash_max_resolution: int = 128
    """Vertices per axis of the finest level, over the scene box."""
    hash_backend: HashBackend = "auto"
    """auto: tiny-cuda-nn on CUDA when it imports, else the torch implementation."""
    parent_features: int = 8
    """D, a learned feature vector per parent, input to the MLP beside the hash feature
    (0: parents are a position, a size and an opacity only)."""
    hidden_dim: int = 64
    hidden_layers: int = 1
    """Hidden layers (per parent) between the input layer and the child embedding."""
    max_parents: int = 4000
    """Parent budget: growth stops here (but see ``init_budget``)."""
    init_budget: float = 2.0
    """With ``init_from``: the budget is at least this many times the parents needed for
    the splat run's N Gaussians (N/K), as its size says what the scene needs. Distillation
    keeps at most the budget times K of them (those covering most), which only bites
    below 1."""
    refine_every: int = 100
    prune_opa: float = 0.005
    """Parents whose children's opacities all stay below this are pruned."""
    grow_grad2d: float = 0.0002
    """Children whose mean screen-space gradient (gsplat's units) exceeds this are promoted."""
    grow_error: float = 0.15
    """Children whose mean L1 image error at their centres exceeds this are promoted."""
    grow_fraction: float = 0.5
    """At most this fraction of the parents is added per refinement."""
    distill_steps: int = 600
    """Steps fitting the heads to the splat run's Gaussians (with ``init_from``)."""
    ssim_lambda: float = 0.2
    """Weight of D-SSIM in the photometric loss (1 - w for L1)."""
    train_background: Literal["auto", "white", "black", "random"] = "auto"
    """As the splat method's: random colours behind RGBA data (auto), or a fixed one."""
    means_lr: float = 1.6e-4
    """Parent positions, times the camera extent (decays 100x)."""
    scales_lr: float = 5e-3
    opacities_lr: float = 5e-2
    features_lr: float = 1e-2
    hash_lr: float = 1e-2
    mlp_lr: float = 2e-3
    lr_final_factor: float = 0.1
    """Hash and MLP learning rates decay to this fraction."""
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    backend: Literal["auto", "torch", "gsplat"] = "auto"

    def resolve_schedule(self, device: torch.device | str) -> str:
        if self.schedule != "auto":
            return self.schedule
        return "gpu" if torch.device(device).type == "cuda" else "cpu"

    def default_max_steps(self, device: torch.device | str) -> int:
        return SCHEDULES[self.resolve_schedule(device)]["max_steps"]


def fibonacci_sphere(n: int, radius: float) -> Tensor:
    """[n,3] nearly even points on a sphere of ``radius`` (the origin for n = 1)."""
    if n == 1:
        return torch.zeros(1, 3)
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt(1 - z * z)
    phi = math.pi * (3 - math.sqrt(5)) * i
    return (torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1) * radius).float()


class LPGSModel(SceneModel):
    """Parents (``parents.means [P,3]``, ``parents.scales [P]`` log sizes), a hash grid and
    the child decoder; see the module docstring for the decoding."""

    method_name = "lpgs"

    def __init__(self, config: LPGSConfig, scene: SceneMeta):
        super().__init__(config, scene)
        if config.children < 1:
            raise Snap3dError(f"children must be at least 1, got {config.children}")
        if not 0 <= config.sh_degree <= 3:
            raise Snap3dError(f"sh_degree must be in 0..3, got {config.sh_degree}")
        self.max_steps = config.default_max_steps("cpu")
        # parents growth may reach: max_parents, or more after distill (a training state)
        self.budget = config.max_parents
        self.parents = nn.ParameterDict(
            {
                "means": nn.Parameter(torch.zeros(0, 3)),
                "scales": nn.Parameter(torch.zeros(0)),
                "opacities": nn.Parameter(torch.zeros(0)),
                "features": nn.Parameter(torch.zeros(0, config.parent_features)),
            }
        )
        self.hash = HashGrid(
            config.hash_levels,
            config.hash_features,
            config.hash_log2_size,
            config.hash_base_resolution,
            per_level_scale_for(
                config.hash_base_resolution, config.hash_max_resolution, config.hash_levels
            ),
            backend=config.hash_backend,
        )
        h = config.hidden_dim
        self.input_layer = nn.Linear(self.hash.output_dim + config.parent_features, h)
        self.child_embedding = nn.Parameter(torch.randn(config.children, h))
        self.hidden = nn.ModuleList(nn.Linear(h, h) for _ in range(config.hidden_layers))
        self.head = nn.Linear(h, 11 + 3 * self.sh_coeffs)
        with torch.no_grad():
            # Small outputs at first: children start on the pattern, grey, init_opacity.
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            self.head.bias[3:6] = math.log(config.child_scale)
            self.head.bias[10] = math.log(config.init_opacity / (1 - config.init_opacity))
        self.register_buffer("pattern", fibonacci_sphere(config.children, config.pattern_radius))
        self.register_buffer("box", scene.bounds_tensor)
        self.register_buffer("background", torch.tensor(scene.background, dtype=torch.float32))
        self._reset_statistics()

    @property
    def sh_coeffs(self) -> int:
        return (self.config.sh_degree + 1) ** 2

    @property
    def num_parents(self) -> int:
        return self.parents["means"].shape[0]

    # -- decoding -----------------------------------------------------------------------

    def normalized(self, means: Tensor) -> Tensor:
        """[...,3] world positions -> [...,3] hash-grid coordinates in [0,1]^3."""
        lo, hi = self.box[0], self.box[1]
        return ((means - lo) / (hi - lo).clamp_min(1e-9)).clamp(0, 1)

    def decode(
        self, means: Tensor, scales: Tensor, opacities: Tensor, features: Tensor
    ) -> SplatData:
        """Children of parents, differentiably.

        Args:
            means: [P,3] parent positions (world).
            scales: [P] parent log sizes.
            opacities: [P] parent opacity logits, added to their children's.
            features: [P,D] parent features, input to the MLP beside the hash feature.

        Returns:
            SplatData of the P*K children (child k of parent p at row p*K + k): means,
            quats (not normalised), log scales, opacity logits, sh0 [P*K,1,3], shN.
        """
        P, K = means.shape[0], self.config.children
        feats = torch.cat([self.hash(self.normalized(means)), features], -1)
        # the layers before the child embedding run once per parent, the head per child
        x = F.relu(self.input_layer(feats))
        for layer in self.hidden:
            x = F.relu(layer(x))
        x = F.relu(x[:, None, :] + self.child_embedding)  # [P,K,H]
        # one split (not slices): its backward writes one gradient tensor, not five
        offset, scale, quat, opacity, sh = self.head(x).split([3, 3, 4, 1, 3 * self.sh_coeffs], -1)
        offset = self.pattern + self.config.offset_range * torch.tanh(offset)
        sh = sh.reshape(P * K, self.sh_coeffs, 3)
        return SplatData(
            means=(means[:, None, :] + torch.exp(scales)[:, None, None] * offset).reshape(-1, 3),
            quats=(quat + quat.new_tensor([1.0, 0.0, 0.0, 0.0])).reshape(-1, 4),
            scales=(scales[:, None, None] + scale).reshape(-1, 3),
            opacities=(opacities[:, None, None] + opacity).reshape(-1),
            sh0=sh[:, :1],
            shN=sh[:, 1:],
        )

    def expand(self) -> SplatData:
        """The current parents' children (differentiable; see ``decode``)."""
        return self.decode(**self.parents)

    @torch.no_grad()
    def to_splats(self) -> SplatData:
        """The children as plain splats, without those too transparent ever to be drawn
        (opacity below 1/255, which the rasterizer skips)."""
        c = self.expand()
        keep = torch.sigmoid(c.opacities) >= 1 / 255
        return SplatData(
            **{k: v.detach().float().contiguous() for k, v in c.to_dict().items()}
        ).select(keep)

    # -- construction -------------------------------------------------------------------

    def set_parents(
        self,
        means: Tensor,
        scales: Tensor,
        opacities: Tensor | None = None,
        features: Tensor | None = None,
    ) -> None:
        """Replace all parents (resizing the parameters).

        Args:
            means: [P,3] positions.
            scales: [P] log sizes.
            opacities: [P] opacity logits added to the children's (default 0).
            features: [P,D] features (default 0).
        """
        values = {
            "means": means,
            "scales": scales,
            "opacities": torch.zeros_like(scales) if opacities is None else opacities,
            "features": scales.new_zeros(len(scales), self.config.parent_features)
            if features is None
            else features,
        }
        for name, value in values.items():
            value = value.detach().float().to(self.box.device).contiguous()
            self.parents[name] = nn.Parameter(value)
        self._reset_statistics()

    def initialize(self, dataset: SceneDataset) -> None:
        cfg = self.config
        if cfg.init_from is not None:
            from snap3d.train.checkpoint import load_model

            teacher, _, _ = load_model(cfg.init_from)
            if not hasattr(teacher, "to_splats"):
                raise Snap3dError("--init-from needs a run of a splat-based method", cfg.init_from)
            self.distill(teacher.to_splats())
            return
        g = torch.Generator().manual_seed(0)
        if dataset.points is not None:
            points = dataset.points.float()
            if points.shape[0] > cfg.max_parents:
                points = points[torch.randperm(points.shape[0], generator=g)[: cfg.max_parents]]
        else:
            lo, hi = dataset.bounds[0], dataset.bounds[1]
            points = lo + (hi - lo) * torch.rand(cfg.init_num_parents, 3, generator=g)
        dist = knn_mean_distance(points).clamp_min(1e-7)
        self.set_parents(points, torch.log(dist * cfg.init_scale))

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        for name in list(self.parents.keys()):
            key = f"parents.{name}"
            if key not in state:
                raise Snap3dError(f"checkpoint lacks {key}")
            self.parents[name] = nn.Parameter(torch.zeros_like(state[key]))
        self.load_state_dict(state)
        self._reset_statistics()

    # -- distillation from a splat run --------------------------------------------------

    def distill(self, splats: SplatData, steps: int | None = None) -> dict[str, float]:
        """Choose parents among ``splats`` and fit the heads so that their children
        reproduce the Gaussians; returns the first and last distillation losses.

        The parent budget becomes ``max(max_parents, init_budget * N / K)`` for the N
        Gaussians with opacity above 0.02. They (when more than the budget times K, those
        with the largest opacity x area) are split by a k-d tree
        (``kd_clusters``) into clusters of exactly K, one parent each, so that every
        Gaussian has a child to become wherever the splat run is dense or sparse. A
        parent sits at its cluster's opacity-weighted centre with a size that lets its
        children reach the farthest member (and at least the widest member's largest
        standard deviation). Each child is pulled to the Gaussian of its cluster nearest
        to it, and each Gaussian pulls the nearest child (a two-way Chamfer match per
        parent) on position, covariance, opacity and colour.
        """
        cfg = self.config
        steps = cfg.distill_steps if steps is None else steps
        splats = splats.to(self.box.device)
        keep = torch.sigmoid(splats.opacities) > 0.02
        if int(keep.sum()) == 0:
            raise Snap3dError("the splat run has no Gaussians to start from")
        splats = splats.select(keep)
        K = cfg.children
        self.budget = max(cfg.max_parents, math.ceil(cfg.init_budget * splats.num / K))
        if splats.num > self.budget * K:
            # over budget: keep the Gaussians that cover the most (opacity x area)
            area = splats.scales.topk(2, dim=-1).values.sum(-1)
            importance = torch.sigmoid(splats.opacities).log() + area
            splats = splats.select(importance.topk(self.budget * K).indices)
        cell, members = kd_clusters(splats.means, K)
        weights = torch.sigmoid(splats.opacities)
        P = int(cell.max()) + 1
        wsum = weights.new_zeros(P).index_add_(0, cell, weights)
        means = weights.new_zeros(P, 3).index_add_(0, cell, splats.means * weights[:, None])
        means = means / wsum[:, None]
        # children reach |pattern| + offset_range * tanh(o) parent sizes from the centre
        reach = cfg.pattern_radius + 0.75 * cfg.offset_range
        far = weights.new_zeros(P).scatter_reduce(
            0, cell, (splats.means - means[cell]).norm(dim=-1), "amax"
        )
        std = torch.exp(splats.scales).max(-1).values
        widest = weights.new_zeros(P).scatter_reduce(0, cell, std, "amax")
        sizes = torch.maximum(far / reach, widest).clamp_min(1e-7)
        self.set_parents(means, torch.log(sizes))

        idx, valid = members.index, members.valid  # [P,M]
        teacher = (
            splats.means[idx],
            covariances_torch(splats.quats[idx], torch.exp(splats.scales[idx])),
            torch.sigmoid(splats.opacities[idx]),
            F.pad(
                torch.cat([splats.sh0, splats.shN], 1)[idx][..., : self.sh_coeffs, :],
                (0, 0, 0, max(self.sh_coeffs - 1 - splats.shN.shape[1], 0)),
            ),
        )
        t_weight = teacher[2] * valid

        optim = torch.optim.Adam(
            [{"params": g.params, "lr": g.lr, "eps": g.eps} for g in self.param_groups().values()]
        )
        M = idx.shape[1]
        history = []
        for _ in range(steps):
            c = self.expand()
            size = torch.exp(self.parents["scales"]).detach()[:, None]  # [P,1]
            child = (
                c.means.view(P, K, 3),
                covariances_torch(c.quats, torch.exp(c.scales)).view(P, K, 3, 3),
                torch.sigmoid(c.opacities).view(P, K),
                torch.cat([c.sh0, c.shN], 1).view(P, K, self.sh_coeffs, 3),
            )
            d = torch.cdist(child[0], teacher[0]) / size[..., None]  # [P,K,M]
            d = d.masked_fill(~valid[:, None, :], math.inf)
            # each child to its nearest Gaussian, each Gaussian to its nearest child
            child_side = pair_error(
                child, teacher, torch.arange(K).expand(P, K), d.argmin(-1), size
            )
            teacher_side = pair_error(
                child, teacher, d.argmin(1), torch.arange(M).expand(P, M), size
            )
            loss = child_side.mean() + (teacher_side * t_weight).sum() / t_weight.sum()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            history.append(float(loss.detach()))
        return {"first": history[0], "last": history[-1]} if history else {}

    # -- rendering ----------------------------------------------------------------------

    def sh_degree_at(self, step: int | None) -> int:
        if step is None:
            return self.config.sh_degree
        return min(step // max(self._schedule()["sh_interval"], 1), self.config.sh_degree)

    def render(
        self,
        cameras: Cameras,
        step: int | None = None,
        background: Tensor | None = None,
        render_mode: str = "RGB+ED",
        **kwargs: Any,
    ) -> RenderOutput:
        """Render ``cameras`` ([N,H,W,3] images) from the decoded children."""
        c = self.expand()
        return render_splats(
            cameras,
            c.means,
            c.quats,
            c.scales,
            c.opacities,
            torch.cat([c.sh0, c.shN], 1),
            config=self.config,
            sh_degree=self.sh_degree_at(step),
            background=self.background if background is None else background,
            render_mode=render_mode,
        )

    # -- training -----------------------------------------------------------------------

    def _schedule(self) -> dict[str, int]:
        base = SCHEDULES[self.config.resolve_schedule(self.box.device)]
        scale = self.max_steps / base["max_steps"]
        return {k: max(1, int(round(v * scale))) for k, v in base.items()}

    def _train_background(self, batch: dict[str, Any]) -> Tensor | None:
        """Background of a training render of RGBA data; None keeps the dataset's."""
        mode = self.config.train_background
        if batch.get("alpha") is None or mode == "auto" and not self.scene.has_alpha:
            return None
        if mode in ("auto", "random"):
            return torch.rand(3, device=self.box.device)
        return torch.full((3,), 1.0 if mode == "white" else 0.0, device=self.box.device)

    def forward(self, batch: dict[str, Any]) -> RenderOutput:
        batch["render_background"] = bg = self._train_background(batch)
        return self.render(batch["cameras"], step=batch.get("step"), background=bg)

    def loss(self, batch: dict[str, Any], output: RenderOutput) -> dict[str, Tensor]:
        target = batch["image"]
        bg = batch.get("render_background")
        if bg is not None and batch.get("alpha") is not None:
            # images arrive composited on the dataset background: swap it for bg.
            target = target + (bg - self.background) * (1 - batch["alpha"])
        pred = output.rgb
        # the error map guides growth in after_step
        output.extras["error"] = (pred - target).abs().mean(-1).detach()
        w = self.config.ssim_lambda
        return {
            "l1": (1 - w) * (pred - target).abs().mean(),
            "dssim": w * ssim_loss(pred, target),
        }

    def param_groups(self) -> dict[str, ParamGroup]:
        """Parent groups are named after their ``parents`` keys (for gsplat's ops)."""
        cfg = self.config
        s = self.scene.camera_extent
        mlp = [p for n, p in self.named_parameters() if not n.startswith(("parents.", "hash."))]
        decay = cfg.lr_final_factor
        return {
            "means": ParamGroup([self.parents["means"]], cfg.means_lr * s, cfg.means_lr * s * 0.01),
            "scales": ParamGroup([self.parents["scales"]], cfg.scales_lr),
            "opacities": ParamGroup([self.parents["opacities"]], cfg.opacities_lr),
            "features": ParamGroup([self.parents["features"]], cfg.features_lr),
            "hash": ParamGroup([self.hash.params], cfg.hash_lr, cfg.hash_lr * decay),
            "mlp": ParamGroup(mlp, cfg.mlp_lr, cfg.mlp_lr * decay, eps=1e-8),
        }

    # -- tree management ----------------------------------------------------------------

    def _reset_statistics(self) -> None:
        n = self.num_parents * self.config.children
        device = self.box.device
        self._grad2d = torch.zeros(n, device=device)
        self._error = torch.zeros(n, device=device)
        self._count = torch.zeros(n, device=device)

    @torch.no_grad()
    def _accumulate(self, output: RenderOutput) -> None:
        """Per child: screen-space gradient norms (gsplat's normalisation), image error at
        its projected centre, and how often it was visible."""
        meta = output.extras
        means2d = meta["means2d"]
        if means2d.grad is None or means2d.shape[1] != self._count.shape[0]:
            return
        C, W, H = meta["n_cameras"], meta["width"], meta["height"]
        grads = means2d.grad.clone()
        grads[..., 0] *= W / 2.0 * C
        grads[..., 1] *= H / 2.0 * C
        visible = (meta["radii"] > 0).all(-1)  # [C,N]
        cam, child = torch.where(visible)
        self._grad2d.index_add_(0, child, grads[cam, child].norm(dim=-1))
        self._count.index_add_(0, child, torch.ones_like(child, dtype=torch.float32))
        error = meta.get("error")
        if error is not None:
            xy = means2d.detach()[cam, child].long()
            x, y = xy[:, 0].clamp(0, W - 1), xy[:, 1].clamp(0, H - 1)
            self._error.index_add_(0, child, error[cam, y, x])

    def after_step(self, step: int, output: RenderOutput, optimizers: dict) -> None:
        self._accumulate(output)
        sched = self._schedule()
        if (
            sched["refine_start"] < step < sched["refine_stop"]
            and step % self.config.refine_every == 0
        ):
            self.refine(optimizers)

    @torch.no_grad()
    def refine(self, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, int]:
        """Prune parents whose children contribute nothing and promote strong children to
        parents, from the statistics gathered since the last call; returns the counts.

        A parent is pruned when all its children's opacities are below ``prune_opa`` or none
        was visible. A visible, opaque-enough child is promoted when its mean screen-space
        gradient exceeds ``grow_grad2d`` or its mean image error exceeds ``grow_error``; the
        strongest go first, at most ``grow_fraction`` of the parents and up to the budget
        (``max_parents``, or more after ``distill``). A new parent sits at the child's
        centre with the child's largest scale as its size (never larger than its old
        parent's). Optimizer moments of the parent parameters are cut and extended with the
        parameters.
        """
        from gsplat.strategy.ops import _update_param_with_optimizer, remove

        cfg = self.config
        P, K = self.num_parents, cfg.children
        count = self._count.view(P, K)
        seen = count.clamp_min(1)
        grad = self._grad2d.view(P, K) / seen
        error = self._error.view(P, K) / seen
        c = self.expand()
        opacity = torch.sigmoid(c.opacities).view(P, K)
        prune = (opacity.max(1).values < cfg.prune_opa) | (count.sum(1) == 0)

        score = torch.maximum(grad / cfg.grow_grad2d, error / cfg.grow_error)
        score = score.masked_fill((count == 0) | (opacity < cfg.prune_opa) | prune[:, None], 0)
        room = min(self.budget - (P - int(prune.sum())), math.ceil(cfg.grow_fraction * P))
        strong = torch.nonzero(score.flatten() > 1)[:, 0]
        strong = strong[score.flatten()[strong].argsort(descending=True)[: max(room, 0)]]
        old = strong // K
        values = {
            "means": c.means[strong],
            "scales": torch.minimum(c.scales[strong].max(-1).values, self.parents["scales"][old]),
            "opacities": self.parents["opacities"][old],
            "features": self.parents["features"][old],
        }

        if bool(prune.any()):
            remove(self.parents, optimizers, {}, prune)
        if strong.numel() > 0:

            def param_fn(name: str, p: Tensor) -> Tensor:
                return nn.Parameter(torch.cat([p, values[name].to(p)]), requires_grad=True)

            def optimizer_fn(key: str, v: Tensor) -> Tensor:
                return torch.cat([v, v.new_zeros(strong.numel(), *v.shape[1:])])

            _update_param_with_optimizer(param_fn, optimizer_fn, self.parents, optimizers)
        self._reset_statistics()
        return {"pruned": int(prune.sum()), "promoted": int(strong.numel())}

    def training_state(self) -> dict[str, Tensor]:
        return {
            "grad2d": self._grad2d,
            "error": self._error,
            "count": self._count,
            "budget": torch.tensor(self.budget),
        }

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        device = self.box.device
        self._grad2d = state["grad2d"].to(device)
        self._error = state["error"].to(device)
        self._count = state["count"].to(device)
        if "budget" in state:
            self.budget = int(state["budget"])

    # -- export -------------------------------------------------------------------------

    def export(self, fmt: str, output: Path, **options: Any) -> Path:
        """``lpgs``: the compact file (``snap3d.io.lpgs.save_lpgs``; option ``precision``)."""
        if fmt != "lpgs":
            raise Snap3dError(f"lpgs runs export to ply, splat, spz, lpgs or ios, not {fmt!r}")
        from snap3d.io.lpgs import save_lpgs

        save_lpgs(output, self, **options)
        return Path(output)

    def describe(self) -> dict[str, Any]:
        return {
            "parents": self.num_parents,
            "children": self.num_parents * self.config.children,
            "sh_degree": self.config.sh_degree,
            "hash_parameters": self.hash.params.numel(),
            "mlp_parameters": sum(
                p.numel()
                for n, p in self.named_parameters()
                if not n.startswith(("parents.", "hash."))
            ),
        }


# -- helpers ----------------------------------------------------------------------------


def pair_error(
    child: tuple[Tensor, ...], teacher: tuple[Tensor, ...], ci: Tensor, ti: Tensor, size: Tensor
) -> Tensor:
    """Differences of the pairs (child ci, Gaussian ti) of each parent.

    Args:
        child: per parent and child: means [P,K,3], covariances [P,K,3,3], opacities [P,K],
            SH [P,K,C,3].
        teacher: the same for the Gaussians [P,M,...].
        ci, ti: [P,B] child and Gaussian indices of B pairs per parent.
        size: [P,1] parent sizes, the unit of lengths.

    Returns:
        [P,B] position + covariance + opacity + colour (L1, in RGB units) differences.
    """
    rows = torch.arange(ci.shape[0], device=ci.device)[:, None]
    pairs = [(c[rows, ci], t[rows, ti]) for c, t in zip(child, teacher, strict=True)]
    (cm, tm), (cc, tc), (co, to), (cs, ts) = pairs
    return (
        (cm - tm).norm(dim=-1) / size
        + (cc - tc).abs().sum((-1, -2)) / size**2
        + (co - to).abs()
        + (cs - ts).abs().sum((-1, -2)) * SH_C0
    )


@dataclass
class Members:
    """Up to M member indices per cluster, in input order: index [P,M] (padded with 0)
    and valid [P,M]."""

    index: Tensor
    valid: Tensor


def kd_clusters(points: Tensor, leaf: int) -> tuple[Tensor, Members]:
    """Split points into clusters of exactly ``leaf`` points (one cluster may hold fewer)
    with a k-d tree: each node is cut across its longest side at a multiple of ``leaf``
    near its median, until no node holds more than ``leaf`` points.

    Unlike a voxel grid, every cluster gets the same number of points wherever the points
    are dense or sparse, so K children per parent can reproduce K Gaussians one to one.

    Args:
        points: [N,3].
        leaf: points per cluster.

    Returns:
        (cluster id [N] in 0..P-1, P = ceil(N / leaf); Members with M = leaf).
    """
    n = points.shape[0]
    device = points.device
    group = torch.zeros(n, dtype=torch.long, device=device)
    arange = torch.arange(n, device=device)
    while True:
        counts = torch.bincount(group)
        if int(counts.max()) <= leaf:
            break
        G = counts.shape[0]
        index = group[:, None].expand(-1, 3)
        lo = points.new_full((G, 3), math.inf).scatter_reduce(0, index, points, "amin")
        hi = points.new_full((G, 3), -math.inf).scatter_reduce(0, index, points, "amax")
        axis = (hi - lo).argmax(1)
        key = points.gather(1, axis[group][:, None])[:, 0]
        order = torch.argsort(key, stable=True)
        order = order[torch.argsort(group[order], stable=True)]
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(group)
        rank[order] = arange - starts[group[order]]
        left = leaf * torch.div(counts + 2 * leaf - 1, 2 * leaf, rounding_mode="floor")
        right = (counts[group] > leaf) & (rank >= left[group])
        _, group = torch.unique(group * 2 + right.long(), return_inverse=True)
    P = int(group.max()) + 1
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=P)
    starts = torch.cumsum(counts, 0) - counts
    rank = arange - starts[group[order]]
    M = int(counts.max())
    index = torch.zeros(P, M, dtype=torch.long, device=device)
    valid = torch.zeros(P, M, dtype=torch.bool, device=device)
    index[group[order], rank] = order
    valid[group[order], rank] = True
    return group, Members(index, valid)


register_method(
    "lpgs",
    LPGSConfig,
    LPGSModel,
    "parent/child splats (LPGS): parents + hash grid + tiny MLPs, a compact file",
)
