"""Scene loaders: every layout becomes a SceneDataset with OpenCV cameras.

``load(path)`` finds the layout from what the folder holds (``detect_layout``), checked
in this order:

1. ``transforms.json`` -> "nerfstudio" (also when a COLMAP model sits beside it, as
   ns-process-data leaves one);
2. ``transforms_train.json`` -> "dnerf" when its frames have ``time``, else "blender";
3. ``sparse/0/cameras.bin|txt`` or ``sparse/cameras.bin|txt`` -> "colmap" (preferred to
   ``poses_bounds.npy``, which LLFF scenes derive from that same model);
4. ``poses_bounds.npy`` -> "llff".

A file may be given instead of a folder: any ``*.json`` but ``transforms_<split>.json``
is read as a nerfstudio transforms file; ``transforms_<split>.json`` and
``poses_bounds.npy`` stand for their folder.

Splits are "train", "val", "test" and "all". Blender/D-NeRF have split files, nerfstudio
may list them; otherwise every 8th frame by file name, from the first, is held out as
both val and test (see ``snap3d.data.scene``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from snap3d.data.blender import is_dnerf, read_blender
from snap3d.data.colmap import read_colmap, read_llff, sparse_dir
from snap3d.data.dataset import ImageSource, SceneDataset
from snap3d.data.nerfstudio import read_nerfstudio
from snap3d.data.scene import SPLITS, ParsedScene
from snap3d.errors import Snap3dError

__all__ = [
    "LAYOUTS",
    "SPLITS",
    "ImageSource",
    "ParsedScene",
    "SceneDataset",
    "describe",
    "detect_layout",
    "load",
    "read_scene",
]

_READERS: dict[str, Callable[[Path], ParsedScene]] = {
    "nerfstudio": read_nerfstudio,
    "blender": read_blender,
    "dnerf": read_blender,
    "colmap": read_colmap,
    "llff": read_llff,
}
LAYOUTS = tuple(_READERS)
_BLENDER_FILE = re.compile(r"transforms_(train|val|test)\.json")


def _locate(path: str | os.PathLike) -> tuple[str, Path]:
    """(layout, what its reader takes: the scene folder or the transforms.json file)."""
    path = Path(path)
    if path.is_file():
        if _BLENDER_FILE.fullmatch(path.name):
            return ("dnerf" if is_dnerf(path.parent) else "blender"), path.parent
        if path.suffix == ".json":
            return "nerfstudio", path
        if path.name == "poses_bounds.npy":
            return "llff", path.parent
        raise Snap3dError(
            "not a scene file: expected a transforms .json file or poses_bounds.npy", path
        )
    if not path.is_dir():
        raise Snap3dError("no such file or folder", path)
    if (path / "transforms.json").is_file():
        return "nerfstudio", path / "transforms.json"
    if (path / "transforms_train.json").is_file():
        return ("dnerf" if is_dnerf(path) else "blender"), path
    if sparse_dir(path) is not None:
        return "colmap", path
    if (path / "poses_bounds.npy").is_file():
        return "llff", path
    raise Snap3dError(
        "no scene found: expected transforms.json (nerfstudio), transforms_train.json "
        "(Blender, D-NeRF), sparse/0/cameras.bin|txt (COLMAP) or poses_bounds.npy (LLFF)",
        path,
    )


def detect_layout(path: str | os.PathLike) -> str:
    """The layout of a scene folder or file: one of ``LAYOUTS`` (rules in the module doc)."""
    return _locate(path)[0]


def read_scene(path: str | os.PathLike) -> ParsedScene:
    """Every frame of the scene at ``path``, with its splits, points and bounds."""
    layout, where = _locate(path)
    return _READERS[layout](where)


def load(
    path: str | os.PathLike,
    split: str = "train",
    downscale: float = 1.0,
    background: str | Sequence[float] | Tensor = "white",
    cache_bytes: int = 2 << 30,
) -> SceneDataset:
    """Load one split of the scene at ``path`` (a folder, or a transforms/poses file).

    Args:
        split: "train", "val", "test" or "all".
        downscale: image size divisor (2 halves width and height); intrinsics follow.
        background: "white", "black" or (r, g, b) in [0,1], under RGBA images.
        cache_bytes: bound on the decoded images kept in memory.

    Raises:
        Snap3dError: naming the offending file, for anything unreadable or inconsistent.
    """
    return read_scene(path).dataset(split, downscale, background, cache_bytes)


def describe(path: str | os.PathLike) -> dict:
    """A JSON-ready summary of a scene for ``snap3d data info`` (reads no pixels).

    Keys: layout, root, frames (count per split; 0 for a split without frames), width,
    height, camera_model, fx and fy ([min, max] in pixels), has_alpha, has_masks,
    has_depths, times ([min, max] normalised, or None), num_points, bounds ([min corner,
    max corner]).
    """
    scene = read_scene(path)
    cameras = scene.cameras
    fx, fy = cameras.Ks[:, 0, 0], cameras.Ks[:, 1, 1]
    return {
        "layout": scene.layout,
        "root": str(scene.root),
        "frames": {
            **{split: len(index) for split, index in scene.splits.items()},
            "all": len(cameras),
        },
        "width": cameras.width,
        "height": cameras.height,
        "camera_model": cameras.camera_model,
        "fx": [fx.min().item(), fx.max().item()],
        "fy": [fy.min().item(), fy.max().item()],
        "has_alpha": scene.has_alpha,
        "has_masks": scene.sources[0].mask_path is not None,
        "has_depths": scene.sources[0].depth_path is not None,
        "times": None
        if cameras.times is None
        else [cameras.times.min().item(), cameras.times.max().item()],
        "num_points": 0 if scene.points is None else len(scene.points),
        "bounds": scene.bounds.tolist(),
    }
