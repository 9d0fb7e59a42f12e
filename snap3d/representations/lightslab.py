"""Light-slab neural light fields (LightSpeed, NeurIPS 2023) with divide and conquer.

A ray meets the two parallel planes of a light slab: the uv plane near the cameras and
the st plane through the scene. Its intersections (u, v, s, t), normalised by the extents
the slab was fitted to, index six 2D feature planes (uv, us, ut, vs, vt, st) at several
resolutions. The bilinearly sampled features, concatenated (LightSpeed) or multiplied
(K-planes), are decoded to colour by a small MLP: one network evaluation per pixel and no
samples along the ray. Optionally the MLP runs at a fraction of the resolution and a
convolutional upsampler decodes the feature map (LightSpeed's and MobileR2L's decoder).

Divide and conquer for scenes seen from all around: K slabs, each facing the scene from a
sector of viewpoints. The sectors are the spherical k-means clusters of the training
cameras' viewpoints; a ray's viewpoint is where it starts seen from the scene centre
(``sector_by="origin"``: every pixel of a frame uses one slab) or where it comes from,
minus its direction (``"direction"``: independent of the origin). A ray goes to the slab
whose sector direction is nearest its viewpoint. Each slab has its own planes; the decoder
is shared.

Everything geometric (sector directions, slab frames, plane depths, extents) is fitted in
``initialize`` from the training cameras and the scene's points, and kept as buffers, so
that a checkpoint renders without the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snap3d.cameras import Cameras, blend_quats, quat_to_rotmat, rotmat_to_quat
from snap3d.errors import Snap3dError
from snap3d.representations.base import ParamGroup, RenderOutput, SceneMeta, SceneModel
from snap3d.train.checkpoint import load_model
from snap3d.train.registry import register_method

if TYPE_CHECKING:
    from snap3d.data.dataset import SceneDataset

# Coordinate pairs of the six feature planes; a plane's rows follow its first coordinate.
PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))  # uv us ut vs vt st
STEPS = {"cpu": 3000, "mps": 5000, "cuda": 20_000}
#: Rays whose direction makes a cosine below this with the slab normal miss the slab.
MIN_COS = 1e-3
#: Widest decoder layer the compiled renderer takes (``kMaxWidth`` in lightslab_cpu.cpp).
KERNEL_MAX_WIDTH = 256


@dataclass
class LightSlabConfig:
    """Light-slab neural light field (LightSpeed): one MLP evaluation per pixel."""

    num_slabs: int = 0
    """Light slabs (sectors of viewpoints). 0: one for a forward-facing capture,
    ``num_slabs_360`` otherwise."""
    num_slabs_360: int = 8
    """Slabs that ``num_slabs 0`` gives a capture that is not forward-facing."""
    frontal_angle: float = 60.0
    """A capture is forward-facing when every camera looks within this many degrees of
    the cameras' mean viewing direction."""
    sector_by: Literal["origin", "direction"] = "origin"
    """A ray's viewpoint: its origin seen from the scene centre (a frame stays in one
    slab), or minus its direction (independent of where along the ray it starts)."""
    slab_margin: float = 0.1
    """The fitted (u,v,s,t) extents grow by this fraction so that novel rays near the
    training ones stay inside; coordinates beyond them are clamped to the border."""
    uv_resolution: int = 32
    """Cells along u and v at the finest level: few, since viewpoints are sparse (captures
    with far fewer viewpoints per slab than a forward-facing grid, like a 360 orbit
    without a teacher, interpolate between them better with 8-16)."""
    st_resolution: int = 0
    """Cells along s and t at the finest level; 0: the training images' longer side
    rounded up to a power of two, at most 512."""
    num_levels: int = 3
    """Resolution levels; each coarser one halves both resolutions."""
    feature_dim: int = 16
    """Channels of every feature plane. Rendering does not pay for them: the compiled
    renderer folds the first layer into the planes, so its cost is set by ``hidden_dim``
    and ``hidden_layers``."""
    combine: Literal["concat", "product"] = "concat"
    """Plane features of a level are concatenated (LightSpeed) or multiplied (K-planes)."""
    hidden_dim: int = 32
    """Width of the decoder's hidden layers. The main cost of rendering: on the bundled
    forward-facing scene 64 gains about 1.3 dB (no teacher) and renders about 2x
    slower; one hidden layer instead of two loses about 1 dB."""
    hidden_layers: int = 2
    decoder: Literal["mlp", "conv"] = "mlp"
    """mlp: the MLP gives each pixel's colour (trains on ray batches). conv: the MLP gives
    a feature map at 1/conv_upsample resolution that sub-pixel convolutions upsample
    (trains on whole images; many times faster to render, less sharp). Its blocks are
    learnt at the training images' pixel scale, which other resolutions change."""
    conv_upsample: int = 4
    """conv decoder: upsampling factor."""
    conv_channels: int = 16
    """conv decoder: channels of the low-resolution feature map."""
    rays_per_batch: int = 4096
    """Rays per training step (mlp decoder)."""
    features_lr: float = 2e-2
    decoder_lr: float = 5e-3
    lr_final_factor: float = 0.1
    """Both learning rates decay exponentially to this fraction at the last step."""
    tv_weight: float = 1e-4
    """Total variation of the feature planes (squared neighbour differences)."""
    alpha_weight: float = 0.5
    """RGBA scenes: weight of the squared alpha error beside the colour error."""
    render_chunk: int = 32_768
    """Rays evaluated at once when rendering (bounds memory at any image size)."""
    teacher: Path | None = None
    """A trained run (e.g. splat) whose renders at pseudo-views around the training
    cameras supervise the light field beside the real images."""
    teacher_views: int = 150
    """Pseudo-views the teacher renders when training starts (and at every refresh)."""
    teacher_refresh_every: int = 1000
    """Render a new set of pseudo-views every this many steps (0: never): more distinct
    viewpoints for the cost of rendering them."""
    teacher_fraction: float = 0.5
    """Fraction of each batch's rays (or of the images, conv decoder) from pseudo-views."""
    teacher_neighbours: int = 3
    """A pseudo-view blends a random training camera with its nearest neighbours."""
    teacher_jitter: float = 0.5
    """Random offset of a pseudo-view's centre, in neighbour spacings (lets it step a
    little outside the training cameras)."""

    def default_max_steps(self, device: torch.device | str) -> int:
        return STEPS.get(torch.device(device).type, STEPS["cpu"])


# -- slab geometry ----------------------------------------------------------------------


@dataclass
class LightSlabs:
    """K light slabs, or one per ray after ``select``.

    Slab coordinates are ``rotations @ (x - origins)``: the slab's z axis is its normal,
    pointing from the cameras into the scene. Its uv plane is ``z = depths[..., 0]``, its
    st plane ``z = depths[..., 1]``; raw intersections (u,v,s,t) map to
    ``(raw - centers) / half_extents``.

    Attributes:
        rotations: [...,3,3] world-to-slab rotations (rows: slab x, y, z in world).
        origins: [...,3] slab origins in world coordinates.
        depths: [...,2] z of the uv and st planes in slab coordinates.
        centers: [...,4] raw (u,v,s,t) that normalise to 0.
        half_extents: [...,4] raw half-widths that normalise to 1.
    """

    rotations: Tensor
    origins: Tensor
    depths: Tensor
    centers: Tensor
    half_extents: Tensor

    def select(self, index: Tensor | int) -> LightSlabs:
        """The slabs at ``index`` ([M] long gives one slab per ray)."""
        return LightSlabs(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def unnormalised(self) -> LightSlabs:
        """The same slabs, giving raw plane coordinates."""
        return replace(
            self,
            centers=torch.zeros_like(self.centers),
            half_extents=torch.ones_like(self.half_extents),
        )


def ray_to_slab(
    origins: Tensor, directions: Tensor, slab: LightSlabs, min_cos: float = MIN_COS
) -> tuple[Tensor, Tensor]:
    """Two-plane coordinates of rays.

    Args:
        origins: [M,3] ray origins (world).
        directions: [M,3] ray directions (world, any length).
        slab: one slab (tensors without a batch dimension) or one per ray ([M,...]).
        min_cos: rays whose direction makes a cosine below this with the slab normal run
            parallel to the planes or away from the st plane.

    Returns:
        uvst [M,4], the normalised intersections with the uv and st planes (inside the
        fitted extents they lie in [-1,1]; 0 for invalid rays), and valid [M] bool.
    """
    R = slab.rotations
    o = (R @ (origins - slab.origins)[..., None])[..., 0]
    d = (R @ directions[..., None])[..., 0]
    dz = d[..., 2]
    valid = dz > min_cos * d.norm(dim=-1)
    dz = torch.where(valid, dz, torch.ones_like(dz))
    t = (slab.depths - o[..., 2:3]) / dz[..., None]  # [M,2] distances to the two planes
    hits = o[..., None, :2] + t[..., :, None] * d[..., None, :2]  # [M,2 planes,2]
    uvst = (hits.flatten(-2) - slab.centers) / slab.half_extents
    return torch.where(valid[..., None], uvst, torch.zeros_like(uvst)), valid


def viewpoint_directions(
    origins: Tensor, directions: Tensor, centre: Tensor, sector_by: str
) -> Tensor:
    """[M,3] unit viewpoints of rays (see ``LightSlabConfig.sector_by``)."""
    v = -directions if sector_by == "direction" else origins - centre
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def kmeans_directions(directions: Tensor, k: int, iterations: int = 30) -> tuple[Tensor, Tensor]:
    """Spherical k-means of unit vectors.

    Seeds deterministically: the direction nearest the mean, then repeatedly the one
    farthest (by cosine) from every seed so far.

    Args:
        directions: [N,3] unit vectors; k: clusters (at most N).

    Returns:
        centroids [k,3] unit vectors and labels [N] (index of the nearest centroid).
    """
    k = min(k, directions.shape[0])
    mean = directions.mean(0)
    seeds = [int((directions @ mean).argmax())]
    for _ in range(k - 1):
        nearest = (directions @ directions[seeds].T).max(-1).values
        seeds.append(int(nearest.argmin()))
    centroids = directions[seeds].clone()
    for _ in range(iterations):
        labels = (directions @ centroids.T).argmax(-1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, directions)
        norms = sums.norm(dim=-1, keepdim=True)
        centroids = torch.where(norms > 1e-8, sums / norms.clamp_min(1e-12), centroids)
    return centroids, (directions @ centroids.T).argmax(-1)


def is_forward_facing(cameras: Cameras, max_angle_deg: float) -> bool:
    """Whether every camera looks within ``max_angle_deg`` of the mean viewing direction."""
    mean = F.normalize(cameras.forward.mean(0), dim=0)
    return bool((cameras.forward @ mean).min() >= math.cos(math.radians(max_angle_deg)))


def fit_slabs(
    cameras: Cameras,
    centre: Tensor,
    num_slabs: int,
    sector_by: str = "origin",
    margin: float = 0.1,
    points: Tensor | None = None,
    grid: int = 9,
) -> tuple[LightSlabs, Tensor]:
    """Fit K light slabs to training cameras.

    The sectors are the k-means clusters of the cameras' viewpoints (their central rays).
    Slab k's normal is the mean viewing direction of its cameras, its x axis their mean
    x axis; its origin is ``centre``. The uv plane goes through its cameras' mean depth;
    the st plane at the harmonic mean depth of the ``points`` in front of it (the depth
    where parallax averages out), or through ``centre`` without points. The extents cover
    a ``grid x grid`` sample of the pixels of every camera whose rays go to the slab,
    widened by ``margin``.

    Args:
        cameras: N training cameras.
        centre: [3] scene centre (world).
        num_slabs: K (at most N).
        points: [P,3] scene points (world), or None.

    Returns:
        the slabs ([K,...] tensors) and the sector directions [K,3].
    """
    centers, forward = cameras.centers, cameras.forward
    views = viewpoint_directions(centers, forward, centre, sector_by)
    sectors, labels = kmeans_directions(views, num_slabs)
    rotations, depths = [], []
    for k in range(sectors.shape[0]):
        members = labels == k
        if not bool(members.any()):
            members = (views @ sectors[k]).argmax()[None]
        z = F.normalize(forward[members].mean(0), dim=0)
        x = cameras.camtoworlds[members, :3, 0].mean(0)
        x = x - (x @ z) * z
        if float(x.norm()) < 1e-6:  # no consistent image x axis: any perpendicular
            x = torch.linalg.cross(z, torch.eye(3, dtype=z.dtype)[int(z.abs().argmin())])
        x = F.normalize(x, dim=0)
        rotations.append(torch.stack([x, torch.linalg.cross(z, x), z]))
        z_uv = float(((centers[members] - centre) @ z).mean())
        z_st = 0.0
        if points is not None:
            ahead = (points - centre) @ z - z_uv
            ahead = ahead[ahead > 1e-6]
            if ahead.numel() > 0:
                z_st = z_uv + float(1 / (1 / ahead).mean())
        if z_st <= z_uv:  # the centre is behind the cameras: put st a spread away
            z_st = z_uv + max(float((centers - centers.mean(0)).norm(dim=-1).max()), 1.0)
        depths.append(torch.tensor([z_uv, z_st]))
    k = sectors.shape[0]
    slabs = LightSlabs(
        rotations=torch.stack(rotations),
        origins=centre.expand(k, 3).clone(),
        depths=torch.stack(depths).to(centers),
        centers=centers.new_zeros(k, 4),
        half_extents=centers.new_ones(k, 4),
    )
    # Extents: raw coordinates of a pixel sample of every camera, per assigned slab.
    ys, xs = torch.meshgrid(
        torch.linspace(0, cameras.height, grid),
        torch.linspace(0, cameras.width, grid),
        indexing="ij",
    )
    pixels = torch.stack([xs, ys], -1).reshape(-1, 2).to(centers)
    cam = torch.arange(len(cameras)).repeat_interleave(pixels.shape[0])
    o, d = cameras.rays_at(cam, pixels.repeat(len(cameras), 1))
    slab = (viewpoint_directions(o, d, centre, sector_by) @ sectors.T).argmax(-1)
    raw, valid = ray_to_slab(o, d, slabs.select(slab))
    for j in range(k):
        mine = raw[valid & (slab == j)]
        if mine.shape[0] == 0:
            continue
        lo, hi = mine.min(0).values, mine.max(0).values
        slabs.centers[j] = (lo + hi) / 2
        scale = float((hi - lo).max())
        slabs.half_extents[j] = ((hi - lo) / 2 * (1 + margin)).clamp_min(1e-3 * max(scale, 1e-6))
    return slabs, sectors


def pseudo_cameras(
    cameras: Cameras,
    count: int,
    generator: torch.Generator,
    neighbours: int = 3,
    jitter: float = 0.5,
) -> Cameras:
    """Cameras around the training ones, for a teacher to render pseudo-views at.

    Each blends a random training camera with its ``neighbours - 1`` nearest others
    (random convex weights of the centres; normalised blend of the rotations as
    quaternions) and moves the centre by a Gaussian of ``jitter`` times the distance
    to the nearest neighbour. Intrinsics are those of the random camera, without lens
    distortion.

    Returns:
        ``count`` cameras of the same size and model.
    """
    n = len(cameras)
    centers = cameras.centers
    dist = torch.cdist(centers, centers)
    m = min(max(neighbours, 1), n)
    near = dist.topk(m, largest=False).indices  # [N,m], the camera itself first
    spacing = dist.topk(min(2, n), largest=False).values[:, -1]
    first = torch.randint(n, (count,), generator=generator)
    group = near[first]  # [count,m]
    weights = -torch.log(torch.rand(count, m, generator=generator).clamp_min(1e-12))
    weights = (weights / weights.sum(-1, keepdim=True)).to(centers)
    quats = rotmat_to_quat(cameras.camtoworlds[:, :3, :3])[group]  # [count,m,4]
    quat = blend_quats(quats, weights, quats[:, :1])
    centre = (weights[..., None] * centers[group]).sum(1)
    noise = torch.randn(count, 3, generator=generator).to(centers)
    centre = centre + noise * jitter * spacing[first, None]
    c2w = torch.eye(4, dtype=centers.dtype).repeat(count, 1, 1)
    c2w[:, :3, :3] = quat_to_rotmat(quat)
    c2w[:, :3, 3] = centre
    # ideal pinhole views: the light field only needs their rays
    return replace(
        cameras[first], camtoworlds=c2w, camera_model="PINHOLE", distortion=None, times=None
    )


# -- training views ---------------------------------------------------------------------


class _Views:
    """Images (real or teacher-rendered) kept on the model's device as one uint8 tensor,
    for sampling random rays or whole images."""

    def __init__(self, cameras: Cameras, images: Tensor, alphas: Tensor | None):
        self.cameras = cameras
        texels = images if alphas is None else torch.cat([images, alphas], -1)
        self.texels = (texels.clamp(0, 1) * 255).round().to(torch.uint8)  # [N,H,W,C]

    def __len__(self) -> int:
        return len(self.cameras)

    def _split(self, texels: Tensor) -> tuple[Tensor, Tensor | None]:
        values = texels.float() / 255
        return values[..., :3], values[..., 3:] if values.shape[-1] == 4 else None

    def rays(self, count: int, generator: torch.Generator) -> dict[str, Any]:
        """``count`` random rays: origins, directions, rgb [M,3], alpha [M,1] or None."""
        n, h, w, _ = self.texels.shape
        flat = torch.randint(n * h * w, (count,), generator=generator).to(self.texels.device)
        cam = torch.div(flat, h * w, rounding_mode="floor")
        pix = flat - cam * h * w
        y = torch.div(pix, w, rounding_mode="floor")
        xy = torch.stack([pix - y * w, y], -1).to(self.cameras.Ks) + 0.5
        origins, directions = self.cameras.rays_at(cam, xy)
        rgb, alpha = self._split(self.texels.flatten(0, 2)[flat])
        return {"origins": origins, "directions": directions, "rgb": rgb, "alpha": alpha}

    def image(self, generator: torch.Generator) -> dict[str, Any]:
        """One random whole image: cameras [1], image [1,H,W,3], alpha [1,H,W,1] or None."""
        i = int(torch.randint(len(self), (1,), generator=generator))
        rgb, alpha = self._split(self.texels[i : i + 1])
        return {"cameras": self.cameras[i], "image": rgb, "alpha": alpha}


# -- the model --------------------------------------------------------------------------


class LightSlabModel(SceneModel):
    """K light slabs of multi-resolution feature planes and a shared decoder."""

    method_name = "lightslab"

    def __init__(self, config: LightSlabConfig, scene: SceneMeta):
        super().__init__(config, scene)
        cfg = config
        if cfg.decoder == "conv" and cfg.conv_upsample < 2:
            raise Snap3dError(f"--conv-upsample must be at least 2, got {cfg.conv_upsample}")
        if cfg.num_levels < 1 or cfg.feature_dim < 1:
            raise Snap3dError("--num-levels and --feature-dim must be at least 1")
        st = cfg.st_resolution or min(
            512, 1 << math.ceil(math.log2(max(scene.width, scene.height, 2)))
        )
        # resolutions[l] = vertices along (u, v, s, t) at level l, coarsest first: a level
        # has half the cells of the next, so the finest grid refines every coarser one
        # (what folding the levels into one plane for rendering relies on).
        self.resolutions = [
            [
                max(1, r >> (cfg.num_levels - 1 - level)) + 1
                for r in (cfg.uv_resolution,) * 2 + (st,) * 2
            ]
            for level in range(cfg.num_levels)
        ]
        levels_out = cfg.feature_dim if cfg.combine == "product" else len(PAIRS) * cfg.feature_dim
        out_dim = cfg.conv_channels if cfg.decoder == "conv" else 3 + int(scene.has_alpha)
        layers: list[nn.Module] = []
        width = cfg.num_levels * levels_out
        for _ in range(cfg.hidden_layers):
            layers += [nn.Linear(width, cfg.hidden_dim), nn.ReLU(inplace=True)]
            width = cfg.hidden_dim
        layers.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*layers)
        self.upsampler = self._upsampler() if cfg.decoder == "conv" else None
        self.register_buffer("background", torch.tensor(scene.background, dtype=torch.float32))
        bounds = scene.bounds_tensor
        self.register_buffer("scene_centre", (bounds[0] + bounds[1]) / 2)
        self._views: _Views | None = None
        self._pseudo: tuple[int, _Views] | None = None  # (refresh period, its views)
        self._allocate(max(cfg.num_slabs, 1))

    def _upsampler(self) -> nn.Sequential:
        """Sub-pixel convolutions: every layer runs at the low resolution and the last one
        gives each low-resolution pixel the colours of its factor x factor block."""
        c, f = self.config.conv_channels, self.config.conv_upsample
        return nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, (3 + int(self.scene.has_alpha)) * f * f, 3, padding=1),
        )

    def _allocate(self, num_slabs: int) -> None:
        """(Re)create the slab buffers and feature planes for ``num_slabs`` slabs.

        The plane of a coordinate pair (a, b) at one level stacks the K slabs along a:
        [1, C, K * rows, cols], so that one ``grid_sample`` serves every slab.
        """
        k, c = num_slabs, self.config.feature_dim
        g = torch.Generator().manual_seed(0)
        planes = []
        for res in self.resolutions:
            for a, b in PAIRS:
                init = torch.randn(1, c, k * res[a], res[b], generator=g) * 0.1
                if self.config.combine == "product":
                    init = init + 1  # products of six planes start near one
                planes.append(nn.Parameter(init.to(self.background.device)))
        self.planes = nn.ParameterList(planes)
        eye = torch.eye(3).repeat(k, 1, 1)
        depths = torch.tensor([[0.0, 1.0]]).repeat(k, 1)
        slabs = LightSlabs(eye, torch.zeros(k, 3), depths, torch.zeros(k, 4), torch.ones(k, 4))
        self._set_slabs(slabs, torch.eye(3)[2:].repeat(k, 1))

    def _set_slabs(self, slabs: LightSlabs, sectors: Tensor) -> None:
        device = self.background.device
        for name in slabs.__dataclass_fields__:
            self.register_buffer(f"slab_{name}", getattr(slabs, name).float().to(device))
        self.register_buffer("sector_directions", sectors.float().to(device))

    @property
    def num_slabs(self) -> int:
        return self.sector_directions.shape[0]

    @property
    def slabs(self) -> LightSlabs:
        return LightSlabs(
            *(getattr(self, f"slab_{name}") for name in LightSlabs.__dataclass_fields__)
        )

    def plane(self, level: int, pair: int) -> Tensor:
        """[K,C,rows,cols] view of the feature plane ``PAIRS[pair]`` at ``level``."""
        p = self.planes[level * len(PAIRS) + pair]
        return p.view(p.shape[1], self.num_slabs, -1, p.shape[3]).transpose(0, 1)

    # -- fitting ----------------------------------------------------------------------

    def initialize(self, dataset: SceneDataset) -> None:
        cfg = self.config
        cameras = dataset.cameras
        k = cfg.num_slabs
        if k <= 0:
            k = 1 if is_forward_facing(cameras, cfg.frontal_angle) else cfg.num_slabs_360
        points = None if dataset.points is None else dataset.points.float()
        slabs, sectors = fit_slabs(
            cameras.to("cpu"), self.scene_centre.cpu(), k, cfg.sector_by, cfg.slab_margin, points
        )
        self._allocate(sectors.shape[0])
        self._set_slabs(slabs, sectors)

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        if "sector_directions" not in state:
            raise Snap3dError("checkpoint lacks the light slabs (sector_directions)")
        self._allocate(state["sector_directions"].shape[0])
        for name, plane in self.planes.named_parameters():
            saved = state.get(f"planes.{name}")
            if saved is not None and saved.shape != plane.shape:
                raise Snap3dError(
                    f"checkpoint plane {name} is {list(saved.shape)}, this version of snap3d "
                    f"makes {list(plane.shape)} from the run's config: the run was made by an "
                    "older snap3d (plane levels became exact refinements); train it again"
                )
        self.load_state_dict(state)

    # -- evaluation -------------------------------------------------------------------

    def assign(self, origins: Tensor, directions: Tensor) -> Tensor:
        """[M] slab of each ray: the sector direction nearest its viewpoint."""
        views = viewpoint_directions(origins, directions, self.scene_centre, self.config.sector_by)
        return (views @ self.sector_directions.T).argmax(-1)

    def sample_features(self, uvst: Tensor, slab: Tensor) -> Tensor:
        """Bilinear samples of every plane at every level.

        Args:
            uvst: [M,4] normalised coordinates (clamped to [-1,1] here: rays beyond the
                fitted extents take the features of the border).
            slab: [M] long slab index.

        Returns:
            [L,6,C,M] features (channels first: the planes' samples are stacked
            without transposing each).
        """
        m, k = uvst.shape[0], self.num_slabs
        unit = (uvst.clamp(-1, 1) + 1) * 0.5  # [M,4] in [0,1]
        slab = slab.to(unit)
        features = []
        for level, res in enumerate(self.resolutions):
            for pair, (a, b) in enumerate(PAIRS):
                # row in the stacked slabs, as grid_sample's [-1,1] (align_corners)
                row = (unit[:, a] * (res[a] - 1) + slab * res[a]) * (2 / (k * res[a] - 1)) - 1
                grid = torch.stack([unit[:, b] * 2 - 1, row], -1).view(1, 1, m, 2)
                plane = self.planes[level * len(PAIRS) + pair]
                features.append(F.grid_sample(plane, grid, align_corners=True)[0, :, 0])
        return torch.cat(features).view(len(self.resolutions), len(PAIRS), -1, m)

    def decode_rays(self, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        """The MLP's raw output [M,D] for rays [M,3] and whether each met its slab [M]."""
        slab = self.assign(origins, directions)
        uvst, valid = ray_to_slab(origins, directions, self.slabs.select(slab))
        features = self.sample_features(uvst, slab)
        if self.config.combine == "product":
            features = features.prod(1)
        return self.mlp(features.flatten(0, -2).T), valid

    # -- compiled inference ------------------------------------------------------------

    def _kernel(self) -> Any:
        """The compiled light-slab operators when this model can use them now: inference
        (no gradients wanted), on the CPU in float32, with concatenated features (the
        fold needs the first layer to be linear in them) and layers at most
        ``KERNEL_MAX_WIDTH`` wide.
        None otherwise."""
        if (
            self.config.combine != "concat"
            or self.background.device.type != "cpu"
            or self.background.dtype != torch.float32
            or max(layer.out_features for layer in self.mlp if isinstance(layer, nn.Linear))
            > KERNEL_MAX_WIDTH
            or (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))
        ):
            return None
        from snap3d.render._cpu import load_lightslab_extension

        return load_lightslab_extension()

    def folded_planes(self) -> tuple[list[Tensor], Tensor]:
        """The decoder's first layer folded into the feature planes, for rendering.

        The first layer is linear in the concatenated plane samples and bilinear sampling
        is linear in the plane, so sampling ``W_(l,p) plane_(l,p)`` (the layer's weight
        block of level l, pair p, applied to every cell) gives that pair's share of the
        layer's output. Coarser levels are resampled onto the finest grid, which refines
        them exactly (piecewise bilinear functions on a grid stay so on its refinement),
        and summed. The result is cached until a parameter changes.

        Returns:
            Six ``[K, rows, cols, H]`` planes (one per pair, rows along its first
            coordinate) and the layer's bias [H]: the layer's pre-activation at a ray is
            the bias plus the bilinear samples of the six planes.
        """
        first = self.mlp[0]
        key = tuple((p.data_ptr(), p._version) for p in (*self.planes, *first.parameters()))
        cached = getattr(self, "_folded", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            c = self.config.feature_dim
            weight = first.weight.view(first.out_features, len(self.resolutions), len(PAIRS), c)
            finest = self.resolutions[-1]
            folded = []
            for pair, (a, b) in enumerate(PAIRS):
                total = None
                for level in range(len(self.resolutions)):
                    plane = self.plane(level, pair)  # [K,C,rows,cols]
                    plane = F.interpolate(
                        plane, size=(finest[a], finest[b]), mode="bilinear", align_corners=True
                    )
                    part = torch.einsum("hc,kcab->kabh", weight[:, level, pair], plane)
                    total = part if total is None else total + part
                folded.append(total.contiguous())
            result = (folded, first.bias.detach().clone())
        self._folded = (key, result)
        return result

    def _kernel_args(self, composite: bool) -> list:
        """The arguments of the compiled operators after the rays; ``composite``: the
        kernel returns composited rgb and alpha [M,4] (``_composite``), not raw outputs."""
        slabs, k = self.slabs, self.num_slabs
        packed = torch.cat(
            [
                slabs.rotations.reshape(k, 9),
                slabs.origins,
                slabs.depths,
                slabs.centers,
                slabs.half_extents,
            ],
            -1,
        ).contiguous()
        planes, bias = self.folded_planes()
        # the folded planes give the first layer's output; the kernel applies ReLU before
        # each following layer
        rest = [layer for layer in list(self.mlp)[1:] if isinstance(layer, nn.Linear)]
        return [
            packed,
            self.sector_directions.contiguous(),
            self.scene_centre.contiguous(),
            self.config.sector_by == "direction",
            MIN_COS,
            planes,
            bias,
            [layer.weight.detach().contiguous() for layer in rest],
            [layer.bias.detach().contiguous() for layer in rest],
            self.background.contiguous() if composite else None,
            self.scene.has_alpha,
        ]

    def _decode_compiled(
        self,
        ops: Any,
        args: list,
        cameras: Cameras,
        index: int,
        grid: tuple,
        pixels: Callable[[], Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Raw outputs [M,D] and validity [M] of camera ``index``'s low-resolution grid
        ``grid = (rows, cols, stride, ox, oy)``, through the compiled kernel (``args``: from
        ``_kernel_args``); ``pixels()`` gives the grid's image points [M,2] (needed only
        for lens distortion)."""
        rows, cols, stride, ox, oy = grid
        if cameras.camera_model == "PINHOLE" or not bool(
            cameras.distortion_or_zeros()[index].any()
        ):
            return ops.lightslab_pinhole(
                cameras.camtoworlds[index].float(), cameras.Ks[index].float(),
                rows, cols, float(stride), float(ox), float(oy), *args,
            )  # fmt: skip
        points = pixels()
        cam = torch.full((points.shape[0],), index, dtype=torch.long)
        origins, directions = cameras.rays_at(cam, points)
        return ops.lightslab_rays(
            origins.float().contiguous(), directions.float().contiguous(), *args
        )

    def _composite(self, raw: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Colour over the background [...,3] and alpha [...,1] from raw outputs [...,3|4];
        rays that miss their slab show the background."""
        alpha = valid[..., None].to(raw)
        if self.scene.has_alpha:
            alpha = alpha * torch.sigmoid(raw[..., 3:4])
        colour = torch.sigmoid(raw[..., :3])
        return torch.lerp(self.background.expand_as(colour), colour, alpha), alpha

    def render_rays(self, origins: Tensor, directions: Tensor) -> RenderOutput:
        """Rays [M,3] (mlp decoder) -> rgb [M,3] over the background, alpha [M,1]."""
        if self.config.decoder == "conv":
            raise Snap3dError("the conv decoder renders whole images, not ray batches")
        rgb, alpha = self._composite(*self.decode_rays(origins, directions))
        return RenderOutput(rgb=rgb, alpha=alpha)

    def render(self, cameras: Cameras, **kwargs: Any) -> RenderOutput:
        """Render ``cameras``: rgb [N,H,W,3] over the scene background, alpha [N,H,W,1].

        Rays are evaluated ``render_chunk`` at a time (the conv decoder upsamples each
        image's low-resolution feature map at once).
        """
        return self._render(cameras)

    def _render(self, cameras: Cameras, offset: tuple[int, int] = (0, 0)) -> RenderOutput:
        """Pixels ``[oy:, ox:]`` of every camera, with ``offset = (ox, oy)``.

        The conv decoder evaluates the MLP once per ``f x f`` block of pixels, the blocks
        starting at the offset: training shifts them at random so that the planes learn
        every ray, not only the rays through one fixed grid of block centres.
        """
        f = self.config.conv_upsample if self.config.decoder == "conv" else 1
        ox, oy = offset
        H, W = cameras.height - oy, cameras.width - ox
        h, w = -(-H // f), -(-W // f)
        grid: list[Tensor] = []

        def pixels() -> Tensor:
            """Image points [h*w,2] of the low-resolution pixels (made on first use)."""
            if not grid:
                ys, xs = torch.meshgrid(
                    torch.arange(h, device=cameras.device),
                    torch.arange(w, device=cameras.device),
                    indexing="ij",
                )
                # A low-resolution pixel stands for the f x f block it upsamples to.
                points = torch.stack([xs, ys], -1).reshape(-1, 2).to(cameras.Ks)
                grid.append((points + 0.5) * f + torch.tensor(offset).to(points))
            return grid[0]

        rgbs, alphas = [], []
        ops = self._kernel()
        args = None if ops is None else self._kernel_args(composite=self.upsampler is None)
        for i in range(len(cameras)):
            if ops is not None:
                raw, valid = self._decode_compiled(ops, args, cameras, i, (h, w, f, ox, oy), pixels)
                if self.upsampler is None:  # composited by the kernel
                    rgba = raw.view(h, w, 4)
                    rgbs.append(rgba[..., :3])
                    alphas.append(rgba[..., 3:])
                    continue
                valid = valid.view(h, w)
            else:
                raws, valids = [], []
                for chunk in pixels().split(self.config.render_chunk):
                    cam = torch.full((chunk.shape[0],), i, dtype=torch.long, device=cameras.device)
                    raw, valid = self.decode_rays(*cameras.rays_at(cam, chunk))
                    raws.append(raw)
                    valids.append(valid)
                raw, valid = torch.cat(raws), torch.cat(valids).view(h, w)
            if self.upsampler is None:
                raw = raw.view(h, w, -1)
            else:
                blocks = self.upsampler(raw.T.reshape(1, -1, h, w))
                # pixel shuffle straight to [H,W,D]: channel d*f*f + i*f + j is pixel (i, j)
                # of colour d in its block
                raw = blocks.view(-1, f, f, h, w).permute(3, 1, 4, 2, 0).reshape(h * f, w * f, -1)
                valid = valid.repeat_interleave(f, 0).repeat_interleave(f, 1)
            rgb, alpha = self._composite(raw[:H, :W], valid[:H, :W])
            rgbs.append(rgb)
            alphas.append(alpha)
        return RenderOutput(rgb=torch.stack(rgbs), alpha=torch.stack(alphas))

    # -- training ---------------------------------------------------------------------

    def _training_views(self, dataset: SceneDataset) -> _Views:
        """All training images as one tensor on the model's device."""
        device = self.background.device
        alphas = [dataset.alpha(i) for i in range(len(dataset))] if self.scene.has_alpha else None
        return _Views(
            dataset.cameras.to(device),
            dataset.images().to(device),
            None if alphas is None else torch.stack(alphas).to(device),
        )

    @torch.no_grad()
    def _teacher_views(self, cameras: Cameras, seed: int) -> _Views:
        """The teacher's renders at ``teacher_views`` pseudo-cameras around ``cameras``."""
        cfg = self.config
        device = self.background.device
        teacher, _, _ = load_model(cfg.teacher, device)
        generator = torch.Generator().manual_seed(seed)
        cams = pseudo_cameras(
            cameras.to("cpu"),
            cfg.teacher_views,
            generator,
            cfg.teacher_neighbours,
            cfg.teacher_jitter,
        ).to(device)
        bg_teacher = torch.tensor(teacher.scene.background, device=device)
        images, alphas = [], []
        for i in range(len(cams)):
            out = teacher.render(cams[i])
            alpha = out.alpha if out.alpha is not None else torch.ones_like(out.rgb[..., :1])
            # the teacher composited over its own background; ours may differ
            images.append(out.rgb + (self.background - bg_teacher) * (1 - alpha))
            alphas.append(alpha)
        return _Views(cams, torch.cat(images), torch.cat(alphas) if self.scene.has_alpha else None)

    def _pseudo_views(self, cameras: Cameras, step: int) -> _Views | None:
        """The pseudo-views of the refresh period of ``step`` (rendered on first use; the
        period seeds them, so a resumed run sees the views the original run saw)."""
        if self.config.teacher is None:
            return None
        every = self.config.teacher_refresh_every
        period = step // every if every > 0 else 0
        if self._pseudo is None or self._pseudo[0] != period:
            self._pseudo = (period, self._teacher_views(cameras, seed=period))
        return self._pseudo[1]

    def train_batch(self, dataset: SceneDataset, step: int, generator: torch.Generator) -> dict:
        """Random rays (mlp decoder) or one random image (conv decoder) from the training
        images, and from the teacher's pseudo-views in ``teacher_fraction``."""
        if self._views is None:
            self._views = self._training_views(dataset)
        cfg = self.config
        pseudo = self._pseudo_views(dataset.cameras, step)
        if cfg.decoder == "conv":
            use_pseudo = (
                pseudo is not None
                and float(torch.rand(1, generator=generator)) < cfg.teacher_fraction
            )
            batch = (pseudo if use_pseudo else self._views).image(generator)
            batch["offset"] = torch.randint(cfg.conv_upsample, (2,), generator=generator)
            return batch
        n_pseudo = 0 if pseudo is None else round(cfg.rays_per_batch * cfg.teacher_fraction)
        parts = [self._views.rays(cfg.rays_per_batch - n_pseudo, generator)]
        if n_pseudo > 0:
            parts.append(pseudo.rays(n_pseudo, generator))
        return {
            key: None if parts[0][key] is None else torch.cat([p[key] for p in parts])
            for key in parts[0]
        }

    def forward(self, batch: dict[str, Any]) -> RenderOutput:
        if "origins" in batch:
            return self.render_rays(batch["origins"], batch["directions"])
        return self._render(batch["cameras"], tuple(batch["offset"].tolist()))

    def total_variation(self) -> Tensor:
        """Mean squared difference of neighbouring cells, summed over the planes."""
        tv = self.background.new_zeros(())
        for level in range(len(self.resolutions)):
            for pair in range(len(PAIRS)):
                p = self.plane(level, pair)
                rows = (p[:, :, 1:] - p[:, :, :-1]).square().mean()
                tv = tv + rows + (p[..., 1:] - p[..., :-1]).square().mean()
        return tv

    def loss(self, batch: dict[str, Any], output: RenderOutput) -> dict[str, Tensor]:
        cfg = self.config
        if "rgb" in batch:
            target, alpha = batch["rgb"], batch["alpha"]
        else:  # an image rendered from its offset on
            ox, oy = batch["offset"].tolist()
            target, alpha = batch["image"][:, oy:, ox:], batch["alpha"]
            alpha = None if alpha is None else alpha[:, oy:, ox:]
        losses = {"mse": (output.rgb - target).square().mean()}
        if self.scene.has_alpha and alpha is not None:
            losses["alpha"] = cfg.alpha_weight * (output.alpha - alpha).square().mean()
        if cfg.tv_weight > 0:
            losses["tv"] = cfg.tv_weight * self.total_variation()
        return losses

    def param_groups(self) -> dict[str, ParamGroup]:
        cfg = self.config
        decoder = [p for name, p in self.named_parameters() if not name.startswith("planes.")]
        return {
            "features": ParamGroup(
                list(self.planes), cfg.features_lr, cfg.features_lr * cfg.lr_final_factor
            ),
            "decoder": ParamGroup(decoder, cfg.decoder_lr, cfg.decoder_lr * cfg.lr_final_factor),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "slabs": self.num_slabs,
            "resolutions": self.resolutions,
            "parameters": sum(p.numel() for p in self.parameters()),
        }


register_method(
    "lightslab",
    LightSlabConfig,
    LightSlabModel,
    "light-slab neural light field (LightSpeed): one network evaluation per pixel",
)
