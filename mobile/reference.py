"""The reference renderer: a bundle's pixels from its files alone, with the phone's math.

``render(bundle, cameras)`` reads nothing but the bundle (``manifest.json``, the ``.spz``
files and the raw tensors the manifest lays out) and runs what an iPhone viewer runs:

- ``splat``: decode the SPZ file (``snap3d.io.load_spz``: its RUB axes back to the
  bundle's world axes) and rasterize it (``snap3d.render.rasterize_gaussians``) with the
  manifest's ``gaussians`` settings.
- ``lpgs``: expand every parent's children with `ChildDecoder`, built from the exported
  weights, and rasterize the children. ``source="fallback"`` renders the expanded ``.spz``
  instead, as a viewer without Core ML would.
- ``lightslab``: `LightSlabField` sends each pixel's ray to its slab, intersects the slab's
  two planes, samples the float16 feature planes bilinearly and decodes with the MLP.

No representation class is imported and no checkpoint is read: the networks are rebuilt
from the manifest's tensor layout with plain torch operations. The same two modules are
what ``snap3d.mobile.coreml`` traces into the bundle's Core ML packages, so these renders
are also the Core ML models' renders (up to their float16 arithmetic).

Tensor names in the layout are the trained model's parameter names (``head.weight``,
``planes.3``, ...); a module stores each as a buffer named with ``_`` for ``.``
(`buffer_name`), which is also the name its constant gets in the Core ML program.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snap3d.cameras import Cameras
from snap3d.errors import Snap3dError
from snap3d.io import load_spz
from snap3d.render import rasterize_gaussians

__all__ = [
    "PAIRS",
    "PAIR_NAMES",
    "Bundle",
    "ChildDecoder",
    "LightSlabField",
    "Rendered",
    "buffer_name",
    "cameras_from_entries",
    "load_bundle",
    "render",
]

#: Coordinate pairs of the six light-slab feature planes, in the order the planes are stored.
PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))  # uv us ut vs vt st
PAIR_NAMES = ("uv", "us", "ut", "vs", "vt", "st")


def buffer_name(tensor_name: str) -> str:
    """The module buffer (and Core ML constant) name of a layout tensor: ``.`` -> ``_``."""
    return tensor_name.replace(".", "_")


@dataclass
class Rendered:
    """rgb [N,H,W,3] over the manifest's background; alpha [N,H,W,1] coverage."""

    rgb: Tensor
    alpha: Tensor


# -- networks ---------------------------------------------------------------------------


class _Weights(nn.Module):
    """A module whose parameters are float32 buffers named after layout tensors."""

    def _store(self, weights: dict[str, Tensor], name: str, shape: tuple[int, ...]) -> None:
        if name not in weights:
            raise Snap3dError(f"the bundle's tensors lack {name!r}")
        value = weights[name].float()
        if value.numel() != int(np.prod(shape)):
            raise Snap3dError(
                f"tensor {name!r} has shape {list(value.shape)}; the decoder needs {list(shape)}"
            )
        self.register_buffer(buffer_name(name), value.reshape(shape).contiguous())

    def weight(self, name: str) -> Tensor:
        return getattr(self, buffer_name(name))


class ChildDecoder(_Weights):
    """LPGS children of parents, from the manifest's ``lpgs`` block and exported weights.

    With f the parent's feature, m its mean, s its log size, a its opacity logit, for
    child k::

        h = relu(input_layer.weight f + input_layer.bias)     per parent
        h = relu(hidden.i.weight h + hidden.i.bias)           for i < hidden_layers
        h = relu(h + child_embedding[k])                      per child
        o = head.weight h + head.bias                         [11 + 3 (d+1)^2]
        mean    = m + exp(s) (pattern[k] + offset_range tanh(o[0:3]))
        scale   = exp(s + o[3:6])
        quat    = normalize(o[6:10] + (1, 0, 0, 0))           (w, x, y, z)
        opacity = sigmoid(a + o[10])
        SH      = o[11:] as [(d+1)^2, 3]                      (DC first; colour channel inner)

    ``forward(features [P,F], means [P,3], log_sizes [P], opacities [P])`` returns means
    [P,K,3], quats [P,K,4], scales [P,K,3], opacities [P,K] and sh [P,K,(d+1)^2,3]: what
    a rasterizer draws.
    """

    def __init__(self, spec: dict, weights: dict[str, Tensor]):
        super().__init__()
        k, f, h = spec["children"], spec["feature_dim"], spec["hidden_dim"]
        self.num_children = k
        self.sh_coeffs = (spec["sh_degree"] + 1) ** 2
        self.hidden_layers = spec["hidden_layers"]
        self.offset_range = float(spec["offset_range"])
        out = 11 + 3 * self.sh_coeffs
        self._store(weights, "input_layer.weight", (h, f))
        self._store(weights, "input_layer.bias", (h,))
        self._store(weights, "child_embedding", (k, h))
        for i in range(self.hidden_layers):
            self._store(weights, f"hidden.{i}.weight", (h, h))
            self._store(weights, f"hidden.{i}.bias", (h,))
        self._store(weights, "head.weight", (out, h))
        self._store(weights, "head.bias", (out,))
        self.register_buffer("pattern", torch.tensor(spec["pattern"], dtype=torch.float32))
        self.register_buffer("identity", torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def forward(
        self, features: Tensor, means: Tensor, log_sizes: Tensor, opacities: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        w = self.weight
        h = F.relu(F.linear(features, w("input_layer.weight"), w("input_layer.bias")))
        for i in range(self.hidden_layers):
            h = F.relu(F.linear(h, w(f"hidden.{i}.weight"), w(f"hidden.{i}.bias")))
        h = F.relu(h[:, None, :] + w("child_embedding"))  # [P,K,H]
        o = F.linear(h, w("head.weight"), w("head.bias"))  # [P,K,11+3C]
        size = torch.exp(log_sizes)[:, None, None]
        offsets = self.pattern + self.offset_range * torch.tanh(o[..., 0:3])
        child_means = means[:, None, :] + size * offsets
        scales = torch.exp(log_sizes[:, None, None] + o[..., 3:6])
        q = o[..., 6:10] + self.identity
        quats = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alphas = torch.sigmoid(opacities[:, None] + o[..., 10])
        sh = o[..., 11:].unflatten(-1, (self.sh_coeffs, 3))
        return child_means, quats, scales, alphas, sh


class LightSlabField(_Weights):
    """A light-slab light field, from the manifest's ``lightslab`` block and exported weights.

    For a ray with origin o and direction d (world)::

        view   = normalize(o - scene_centre)   (sector_by "origin")   or  normalize(-d)
        k      = argmax_j  view . sectors[j]                     the ray's slab
        o', d' = rotations[k] (o - origins[k]),  rotations[k] d  slab coordinates
        valid  = d'_z > min_cos |d'|
        (u,v)  = o'_xy + (depths[k,0] - o'_z) / d'_z d'_xy       uv plane
        (s,t)  = o'_xy + (depths[k,1] - o'_z) / d'_z d'_xy       st plane
        c      = ((u,v,s,t) - centers[k]) / half_extents[k], 0 where not valid
        x      = (clamp(c, -1, 1) + 1) / 2                       in [0,1]^4

    Level l, pair (a, b) (``PAIRS``) has the plane ``planes.{6 l + pair}``, stored
    [C, K, R_a, R_b] (channels first, then slab, row along coordinate a, column along b;
    R = ``resolutions[l]``). Its feature is the bilinear interpolation at row
    ``x_a (R_a - 1)``, column ``x_b (R_b - 1)`` of slab k (texel centres at integers: the
    corners of [0,1]^2 are the corner texels). The features of all levels and pairs are
    concatenated (level-major, then pair, then channel) or, with ``combine: product``,
    multiplied over the six pairs of a level and concatenated over levels. The MLP
    (``mlp.{j}``, ReLU between layers) gives raw outputs r; colour = sigmoid(r[0:3]),
    alpha = valid * sigmoid(r[3]) (``outputs: rgba``) or valid (``rgb``).

    ``forward(origins [M,3], directions [M,3])`` returns colour [M,3] and alpha [M,1].
    """

    def __init__(self, spec: dict, weights: dict[str, Tensor]):
        super().__init__()
        self.num_slabs = k = spec["num_slabs"]
        self.by_origin = spec["sector_by"] == "origin"
        self.min_cos = float(spec["min_cos"])
        self.product = spec["combine"] == "product"
        self.has_alpha = spec["outputs"] == "rgba"
        self.resolutions = [list(r) for r in spec["resolutions"]]
        c = spec["feature_dim"]
        for name in ("sectors", "rotations", "origins", "depths", "centers", "half_extents"):
            self.register_buffer(name, torch.tensor(spec[name], dtype=torch.float32))
        self.register_buffer("scene_centre", torch.tensor(spec["scene_centre"]))
        for level, res in enumerate(self.resolutions):
            for pair, (a, b) in enumerate(PAIRS):
                # flat rows, so that one gather fetches any slab's texels
                self._store(weights, f"planes.{level * 6 + pair}", (c, k * res[a] * res[b]))
        self.layers = []
        for layer in spec["mlp"]:
            self._store(weights, layer["weight"], tuple(layer["shape"]))
            self._store(weights, layer["bias"], (layer["shape"][0],))
            self.layers.append((layer["weight"], layer["bias"]))

    def _bilinear(self, plane: Tensor, slab: Tensor, x: Tensor, y: Tensor, rows: int, cols: int):
        """[M,C] bilinear samples of ``plane`` [C, K*rows*cols] at unit coordinates ``x``
        (along rows) and ``y`` (along columns) [M] of slab ``slab`` [M] (float)."""
        r = x * (rows - 1)
        q = y * (cols - 1)
        r0 = torch.clamp(torch.floor(r), 0, rows - 2)
        q0 = torch.clamp(torch.floor(q), 0, cols - 2)
        fr, fq = r - r0, q - q0
        # float index arithmetic is exact below 2^24 texels per plane
        first = ((slab * rows + r0) * cols + q0).long()
        corners = (
            (first, (1 - fr) * (1 - fq)),
            (first + 1, (1 - fr) * fq),
            (first + cols, fr * (1 - fq)),
            (first + cols + 1, fr * fq),
        )
        out = 0
        for index, weight in corners:
            out = out + torch.index_select(plane, 1, index) * weight  # [C,M]
        return out.T

    def forward(self, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        view = origins - self.scene_centre if self.by_origin else -directions
        view = view / view.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        slab = torch.argmax(view @ self.sectors.T, dim=-1)  # [M]
        R = self.rotations[slab]  # [M,3,3]
        o = (R * (origins - self.origins[slab])[:, None, :]).sum(-1)
        d = (R * directions[:, None, :]).sum(-1)
        dz = d[:, 2]
        valid = dz > self.min_cos * d.norm(dim=-1)
        dz = torch.where(valid, dz, torch.ones_like(dz))
        t = (self.depths[slab] - o[:, 2:3]) / dz[:, None]  # [M,2]
        hits = torch.cat([o[:, :2] + t[:, 0:1] * d[:, :2], o[:, :2] + t[:, 1:2] * d[:, :2]], -1)
        uvst = (hits - self.centers[slab]) / self.half_extents[slab]
        uvst = torch.where(valid[:, None], uvst, torch.zeros_like(uvst))
        unit = (uvst.clamp(-1, 1) + 1) * 0.5
        slab_f = slab.to(unit.dtype)
        levels = []
        for level, res in enumerate(self.resolutions):
            feats = [
                self._bilinear(
                    self.weight(f"planes.{level * 6 + pair}"),
                    slab_f,
                    unit[:, a],
                    unit[:, b],
                    res[a],
                    res[b],
                )
                for pair, (a, b) in enumerate(PAIRS)
            ]
            if self.product:
                prod = feats[0]
                for f in feats[1:]:
                    prod = prod * f
                feats = [prod]
            levels += feats
        x = torch.cat(levels, -1)
        for i, (weight, bias) in enumerate(self.layers):
            x = F.linear(x, self.weight(weight), self.weight(bias))
            if i < len(self.layers) - 1:
                x = F.relu(x)
        colour = torch.sigmoid(x[:, :3])
        alpha = valid[:, None].to(colour.dtype)
        if self.has_alpha:
            alpha = alpha * torch.sigmoid(x[:, 3:4])
        return colour, alpha


# -- the bundle -------------------------------------------------------------------------


def cameras_from_entries(cameras: list[dict]) -> Cameras:
    """Cameras from manifest camera entries (one image size; OpenCV camtoworld)."""
    sizes = {(c["width"], c["height"]) for c in cameras}
    if len(sizes) != 1:
        raise Snap3dError(f"cameras of several image sizes {sorted(sizes)}: render them apart")
    width, height = sizes.pop()
    Ks = torch.zeros(len(cameras), 3, 3)
    for i, c in enumerate(cameras):
        Ks[i] = torch.tensor([[c["fx"], 0.0, c["cx"]], [0.0, c["fy"], c["cy"]], [0, 0, 1]])
    distortion = None
    model = {c.get("camera_model", "PINHOLE") for c in cameras}
    if model != {"PINHOLE"}:
        if len(model) != 1:
            raise Snap3dError("cameras of several camera models: render them apart")
        distortion = torch.tensor([c["distortion"] for c in cameras], dtype=torch.float32)
    return Cameras(
        camtoworlds=torch.tensor([c["camtoworld"] for c in cameras], dtype=torch.float32),
        Ks=Ks,
        width=width,
        height=height,
        camera_model=model.pop(),
        distortion=distortion,
    )


class Bundle:
    """A bundle folder and its manifest (see ``snap3d.mobile.bundle`` for the format).

    What it decodes (Gaussians, the light field) is kept, so that rendering again, as a
    viewer does for every frame, does not decode again.
    """

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self._decoded: dict[str, Any] = {}

    @property
    def representation(self) -> str:
        return self.manifest["representation"]

    def asset(self, role: str) -> Path:
        """Path of the first asset with ``role``."""
        for a in self.manifest["assets"]:
            if a["role"] == role:
                return self.root / a["path"]
        raise Snap3dError(f"the bundle has no {role!r} asset", self.root)

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor of the manifest's layout, as float32 CPU tensors of its shape."""
        from snap3d.mobile.bundle import read_tensors

        return {k: torch.from_numpy(v.astype(np.float32)) for k, v in read_tensors(self).items()}

    def cameras(self, which: str = "training") -> Cameras:
        """The ``training`` cameras or the ``default`` one."""
        entries = self.manifest["cameras"][which]
        return cameras_from_entries(entries if isinstance(entries, list) else [entries])

    @property
    def background(self) -> Tensor:
        return torch.tensor(self.manifest["render"]["background"], dtype=torch.float32)

    @torch.no_grad()
    def gaussians(self, role: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The Gaussians of an SPZ asset (``splats``, ``splats-fallback``) or, for
        ``children``, those an lpgs bundle's decoder expands: means [N,3], unit quats
        [N,4] (w,x,y,z), scales [N,3] (linear), opacities [N] in [0,1], SH [N,K,3]."""
        if role not in self._decoded:
            if role == "children":
                t = self.tensors()
                decoder = ChildDecoder(self.manifest["lpgs"], t)
                names = ("features", "means", "log_sizes", "opacities")
                decoded = decoder(*(t[f"parents.{n}"] for n in names))
                self._decoded[role] = tuple(x.flatten(0, 1) for x in decoded)
            else:
                entry = next(a for a in self.manifest["assets"] if a["role"] == role)
                s = load_spz(self.root / entry["path"], axes=entry["spz"]["axes"])
                quats = s.quats / s.quats.norm(dim=-1, keepdim=True)
                sh = torch.cat([s.sh0, s.shN], 1)
                self._decoded[role] = (
                    s.means, quats, torch.exp(s.scales), torch.sigmoid(s.opacities), sh
                )  # fmt: skip
        return self._decoded[role]

    def light_field(self) -> LightSlabField:
        """A lightslab bundle's light field."""
        if "light_field" not in self._decoded:
            self._decoded["light_field"] = LightSlabField(
                self.manifest["lightslab"], self.tensors()
            )
        return self._decoded["light_field"]


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Open a bundle folder; ``verify`` checks schema, sizes and checksums first."""
    from snap3d.mobile.bundle import read_manifest, validate

    path = Path(path)
    if path.is_file():
        raise Snap3dError("the reference renderer reads bundle folders; unzip it first", path)
    return Bundle(path, validate(path) if verify else read_manifest(path))


def _rasterize(
    gaussians: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
    cameras: Cameras,
    settings: dict,
    background: Tensor,
) -> Rendered:
    """Gaussians (as `Bundle.gaussians` gives them) -> images, one camera at a time."""
    means, quats, scales, opacities, sh = gaussians
    rgbs, alphas = [], []
    for i in range(len(cameras)):
        cam = cameras[i]
        rgb, alpha, _ = rasterize_gaussians(
            means,
            quats,
            scales,
            opacities,
            sh,
            cam.viewmats,
            cam.Ks,
            cam.width,
            cam.height,
            sh_degree=settings["sh_degree"],
            backgrounds=background[None],
            rasterize_mode=settings["rasterize_mode"],
            eps2d=settings["eps2d"],
            near_plane=settings["near_plane"],
            far_plane=settings["far_plane"],
        )
        rgbs.append(rgb)
        alphas.append(alpha)
    return Rendered(torch.cat(rgbs), torch.cat(alphas))


def _render_light_field(bundle: Bundle, cameras: Cameras, chunk: int = 1 << 16) -> Rendered:
    field = bundle.light_field()
    background = bundle.background
    rgbs, alphas = [], []
    for i in range(len(cameras)):
        origins, directions = cameras.rays(i)
        colour, alpha = [], []
        for o, d in zip(
            origins.reshape(-1, 3).split(chunk), directions.reshape(-1, 3).split(chunk), strict=True
        ):
            c, a = field(o, d)
            colour.append(c)
            alpha.append(a)
        c, a = torch.cat(colour), torch.cat(alpha)
        rgbs.append(
            torch.lerp(background.expand_as(c), c, a).view(cameras.height, cameras.width, 3)
        )
        alphas.append(a.view(cameras.height, cameras.width, 1))
    return Rendered(torch.stack(rgbs), torch.stack(alphas))


@torch.no_grad()
def render(
    bundle: Bundle | str | os.PathLike, cameras: Cameras | None = None, source: str = "auto"
) -> Rendered:
    """Render a bundle from ``cameras`` (default: its training cameras), on the CPU.

    Args:
        bundle: a `Bundle` or a bundle folder (verified first).
        cameras: pinhole (or undistorted) cameras in the bundle's world frame, OpenCV axes.
        source: ``"auto"`` renders what the representation's viewer renders (lpgs: the
            children decoded from the weights); ``"fallback"`` renders an lpgs bundle's
            expanded ``.spz``.

    Returns:
        `Rendered`: rgb [N,H,W,3] over the manifest's background and alpha [N,H,W,1].
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if cameras is None:
        cameras = bundle.cameras("training")
    cameras = cameras.to("cpu")
    rep = bundle.representation
    if source not in ("auto", "fallback"):
        raise Snap3dError(f"source must be 'auto' or 'fallback', not {source!r}")
    if source == "fallback" and rep != "lpgs":
        raise Snap3dError(f"only lpgs bundles have a fallback; this one is {rep}", bundle.root)
    if rep == "lightslab":
        return _render_light_field(bundle, cameras)
    if cameras.distortion is not None:
        raise Snap3dError(
            f"Gaussians are rasterized through pinhole cameras; got {cameras.camera_model} "
            "cameras with distortion (undistort the images, or use the default camera)"
        )
    role = {"splat": "splats", "lpgs": "children"}[rep]
    if source == "fallback":
        role = "splats-fallback"
    settings = bundle.manifest["gaussians"]
    return _rasterize(bundle.gaussians(role), cameras, settings, bundle.background)
