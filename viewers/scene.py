"""What the viewer shows: a model, its training cameras and the facts about it.

``open_scene(path)`` accepts every PATH ``snap3d view`` takes: a run directory (has
``config.json``), an iPhone bundle (has ``manifest.json``), or a ``.ply``/``.spz``/
``.splat`` file. The live viewer builds a ``ViewerScene`` from a running ``Trainer``.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from snap3d.cameras import Cameras
from snap3d.errors import Snap3dError
from snap3d.io.export import SPLAT_FORMATS
from snap3d.representations.base import RenderOutput, SceneMeta

SPLAT_SUFFIXES = (".ply", ".spz", ".splat")
THUMBNAIL_SIZE = 128
"""Long side in pixels of the images drawn in the training frustums."""


@dataclass
class ViewerScene:
    """A scene ready to be shown.

    Attributes:
        model: renders ``Cameras`` (``render(cameras) -> RenderOutput``); splat-based
            models also have ``to_splats() -> SplatData``. ``model.scene`` is its
            ``SceneMeta`` (bounds, background, time range).
        name: the scene's title in the panel.
        facts: label -> value shown in the panel (method, primitives, size, PSNR, ...).
        train_cameras: training cameras, drawn as frustums, or None.
        thumbnail: i -> [h,w,3] uint8 image of training camera i (may be slow: the
            viewer calls it off the main thread), or None.
        export_formats: formats ``exporter`` writes.
        exporter: fmt -> path of the file (or folder) written.
        device: where ``model`` renders.
    """

    model: Any
    name: str
    facts: dict[str, str] = field(default_factory=dict)
    train_cameras: Cameras | None = None
    thumbnail: Callable[[int], np.ndarray] | None = None
    export_formats: tuple[str, ...] = ()
    exporter: Callable[[str], Path] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def time_range(self) -> tuple[float, float] | None:
        return getattr(self.model.scene, "time_range", None)

    @property
    def background(self) -> tuple[float, float, float]:
        return tuple(float(c) for c in self.model.scene.background)

    @property
    def client_splats(self) -> bool:
        """Whether the browser draws the scene itself (static splat-based scenes).

        Dynamic scenes move their Gaussians with a network, so the server renders them.
        """
        return hasattr(self.model, "to_splats") and self.time_range is None


def open_scene(path: Path, device: torch.device | str = "cpu") -> ViewerScene:
    """The scene at ``path``: a run directory, an iPhone bundle or a splat file."""
    path = Path(path)
    device = torch.device(device)
    if path.is_file() and path.suffix.lower() in SPLAT_SUFFIXES:
        return _file_scene(path, device)
    if path.is_dir() and (path / "config.json").is_file():
        return _run_scene(path, device)
    if path.is_dir() and (path / "manifest.json").is_file():
        return _bundle_scene(path)
    if not path.exists():
        raise Snap3dError("no such file or directory", path)
    raise Snap3dError(
        "not a scene snap3d can show: expected a run directory (config.json), an iPhone "
        "bundle (manifest.json) or a .ply/.spz/.splat file",
        path,
    )


def describe_facts(model: Any) -> dict[str, str]:
    """The model's own ``describe()`` as panel facts (numbers with thousands separators)."""
    facts = {}
    for key, value in model.describe().items():
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        facts[key.replace("_", " ")] = str(value)
    return facts


def _megabytes(path: Path) -> str:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return f"{sum(p.stat().st_size for p in files) / 1e6:.2f} MB"


def _file_scene(path: Path, device: torch.device) -> ViewerScene:
    from snap3d.representations.splat import splat_model_from_file

    model = splat_model_from_file(path).to(device)
    facts = {"file": path.name, **describe_facts(model), "size": _megabytes(path)}
    exporter = _splat_exporter(path.name, model)
    return ViewerScene(
        model, path.name, facts, export_formats=SPLAT_FORMATS, exporter=exporter, device=device
    )


def _run_scene(run_dir: Path, device: torch.device) -> ViewerScene:
    from snap3d.io.export import export_run
    from snap3d.render.video import load_train_cameras
    from snap3d.train import load_model
    from snap3d.train.checkpoint import latest_checkpoint

    model, cfg, step = load_model(run_dir, device)
    facts = {"method": cfg["method"], **describe_facts(model), "step": f"{step:,}"}
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        facts["size"] = _megabytes(ckpt / "model.safetensors")
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        latest = json.loads(metrics_path.read_text()).get("latest") or {}
        if latest.get("psnr") is not None:
            facts["PSNR"] = psnr_fact(latest)
    try:
        cameras = load_train_cameras(run_dir)
    except Snap3dError:
        cameras = None
    formats = SPLAT_FORMATS if hasattr(model, "to_splats") else ()
    if importlib.util.find_spec("snap3d.mobile.bundle") is not None:
        formats = (*formats, "ios")
    return ViewerScene(
        model,
        run_dir.name,
        facts,
        train_cameras=cameras,
        thumbnail=_thumbnails(cfg["train"], cameras),
        export_formats=formats,
        exporter=lambda fmt: export_run(run_dir, fmt, device=str(device)),
        device=device,
    )


def _thumbnails(train_cfg: dict, cameras: Cameras | None) -> Callable[[int], np.ndarray] | None:
    """Training image i, small, read from the run's scene folder when it is still there."""
    data = train_cfg.get("data")
    if cameras is None or data is None or not Path(data).exists():
        return None
    dataset = None

    def thumbnail(i: int) -> np.ndarray:
        nonlocal dataset
        if dataset is None:
            from snap3d.data import load

            dataset = load(
                data,
                split="train",
                downscale=train_cfg.get("downscale", 1.0),
                background=train_cfg.get("background", "white"),
                cache_bytes=0,
            )
            if len(dataset) != len(cameras):
                raise Snap3dError(
                    f"the scene has {len(dataset)} training images but the run {len(cameras)}",
                    data,
                )
        return thumbnail_of(dataset.image(i))

    return thumbnail


def thumbnail_of(image: torch.Tensor, long_side: int = THUMBNAIL_SIZE) -> np.ndarray:
    """[H,W,3] float image in [0,1] -> uint8 [h,w,3] with its long side at most ``long_side``."""
    h, w = image.shape[:2]
    factor = long_side / max(h, w)
    if factor < 1:
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        chw = image.permute(2, 0, 1)[None].float()
        image = F.interpolate(chw, size=size, mode="bilinear", antialias=True)[0].permute(1, 2, 0)
    return to_uint8(image)


def _bundle_scene(path: Path) -> ViewerScene:
    """Bundles render on the CPU, as the reference renderer does."""
    try:
        from snap3d.mobile.reference import load_bundle
    except ImportError as e:
        raise Snap3dError(
            f"this is an iPhone bundle, but snap3d.mobile cannot load: {e}", path
        ) from e
    bundle = load_bundle(path)
    has_splats = any(a["role"] in BundleModel.SPLAT_ROLES for a in bundle.manifest["assets"])
    model = (SplatBundleModel if has_splats else BundleModel)(bundle)
    source = bundle.manifest.get("source", {})
    facts = {"bundle": path.name, "method": source.get("method", bundle.representation)}
    facts.update(describe_facts(model))
    if "step" in source:
        facts["step"] = f"{source['step']:,}"
    facts["size"] = _megabytes(path)
    return ViewerScene(
        model,
        path.name,
        facts,
        train_cameras=bundle.cameras("training"),
        export_formats=SPLAT_FORMATS if has_splats else (),
        exporter=_splat_exporter(path.name, model) if has_splats else None,
    )


class BundleModel:
    """An iPhone bundle as the viewer's model.

    Its pixels come from ``snap3d.mobile.reference``, which renders the bundle's files
    with the phone's math, so the viewer shows what ships (on the CPU).
    """

    SPLAT_ROLES = ("splats", "splats-fallback")

    def __init__(self, bundle):
        self.bundle = bundle
        manifest = bundle.manifest
        centers = bundle.cameras("training").centers
        extent = float((centers - centers.mean(0)).norm(dim=-1).max()) * 1.1
        self.scene = SceneMeta(
            bounds=manifest["scene"]["bounds"],
            camera_extent=max(extent, 1e-3),
            background=list(manifest["render"]["background"]),
            width=manifest["render"]["width"],
            height=manifest["render"]["height"],
        )

    def render(self, cameras: Cameras):
        from snap3d.mobile.reference import render

        out = render(self.bundle, cameras)
        return RenderOutput(rgb=out.rgb, alpha=out.alpha)

    def describe(self) -> dict[str, Any]:
        return {"representation": self.bundle.representation}


class SplatBundleModel(BundleModel):
    """A bundle that ships Gaussians (splat; lpgs' expanded fallback): the browser draws them."""

    def to_splats(self):
        from snap3d.io import load_spz

        for asset in self.bundle.manifest["assets"]:
            if asset["role"] in self.SPLAT_ROLES:
                return load_spz(self.bundle.root / asset["path"], axes=asset["spz"]["axes"])
        raise Snap3dError("the bundle ships no Gaussians", self.bundle.root)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gaussians": self.to_splats().num}


def _splat_exporter(name: str, model: Any) -> Callable[[str], Path]:
    """Writes ``model.to_splats()`` as NAME.FMT in a scratch folder that lives as long as
    the exporter (never beside the user's file)."""
    from snap3d.io import save_splats

    scratch = tempfile.TemporaryDirectory(prefix="snap3d-view-")

    def export(fmt: str) -> Path:
        out = Path(scratch.name) / f"{Path(name).stem}.{fmt}"
        save_splats(out, model.to_splats())
        return out

    export.scratch = scratch
    return export


def psnr_fact(result: dict) -> str:
    """An evaluation result (``Trainer.run_eval``, metrics.json) as the panel's PSNR line."""
    return (
        f"{result['psnr']:.2f} dB ({result.get('split', 'eval')}, step {result.get('step', '?')})"
    )


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H,W,C] float in [0,1] -> uint8 numpy."""
    return (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
