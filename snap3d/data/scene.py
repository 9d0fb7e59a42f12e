"""ParsedScene: a scene as its loader read it, every frame, before a split is chosen.

Each loader (nerfstudio, Blender/D-NeRF, COLMAP, LLFF) turns its files into a
``ParsedScene``; ``ParsedScene.dataset`` then picks a split, applies the downscale and
returns the ``SceneDataset`` that training uses. The conventions the loaders share live
here too.

Held-out split, for layouts that do not list their splits (COLMAP, LLFF, and nerfstudio
files without ``train_filenames``...): the frames are sorted by file name and every 8th,
starting with the first (indices 0, 8, 16, ...), is held out. "val" and "test" are both
that held-out set and "train" is the rest; "all" is every frame. This is LLFF's
``llffhold=8`` and nerfstudio's ``--eval-mode interval`` (``eval_interval=8``).
nerfstudio's *default* ``--eval-mode fraction`` differs: it trains on
``ceil(0.9 N)`` frames taken at ``linspace(0, N-1)`` and evaluates on the rest, so metrics
meant to match ns-train need its interval mode.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from snap3d.cameras import Cameras
from snap3d.data.dataset import ImageSource, SceneDataset, parse_background
from snap3d.errors import Snap3dError

SPLITS = ("train", "val", "test", "all")
HOLDOUT_EVERY = 8


@dataclass
class ParsedScene:
    """Every frame of a scene, as read from its files.

    Attributes:
        layout: the loader that read it: "nerfstudio", "blender", "dnerf", "colmap", "llff".
        root: the scene folder; image paths are resolved against it.
        cameras: Cameras of all N frames at the resolution of the image files.
        sources: N image sources, in the order of ``cameras``.
        splits: "train", "val" and "test" -> [n] long indices into the N frames.
        split_files: the file that defines each of "train", "val", "test" and "all",
            named by errors about that split.
        bounds: [2,3] scene box (min corner, max corner) in world units.
        points: [P,3] initial point cloud in world coordinates, or None.
        point_colors: [P,3] its colours in [0,1], or None.
        has_alpha: whether the images carry alpha (RGBA files or masks).
        image_dir: the folder holding the images, when shrunk copies of it may exist as
            siblings named ``<image_dir>_<n>`` (``images_2``, ``images_4``, ...).
    """

    layout: str
    root: Path
    cameras: Cameras
    sources: list[ImageSource]
    splits: dict[str, Tensor]
    split_files: dict[str, Path]
    bounds: Tensor
    points: Tensor | None = None
    point_colors: Tensor | None = None
    has_alpha: bool = False
    image_dir: Path | None = None

    def split_indices(self, split: str) -> Tensor:
        """[n] long indices of the frames of ``split``; raises if it is unknown or empty."""
        if split not in SPLITS:
            raise Snap3dError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if split == "all":
            return torch.arange(len(self.cameras))
        index = self.splits[split]
        if len(index) == 0:
            file = self.split_files[split]
            problem = f"the {split!r} split has no frames"
            raise Snap3dError(problem if file.exists() else f"file is missing ({problem})", file)
        return index

    def dataset(
        self,
        split: str = "train",
        downscale: float = 1.0,
        background: str | Sequence[float] | Tensor = "white",
        cache_bytes: int = 2 << 30,
    ) -> SceneDataset:
        """One split as a SceneDataset, with images ``downscale`` times smaller.

        For an integer ``downscale`` n, images come from the shrunk copies in
        ``<image_dir>_<n>`` when every one of the split exists there (the cameras then
        follow those files' exact size); otherwise they are resized when loaded. The first
        image's size is checked against its camera here, the others when they load.
        """
        if not (math.isfinite(downscale) and downscale > 0):
            raise Snap3dError(f"downscale must be a positive number, got {downscale}")
        index = self.split_indices(split)
        cameras = self.cameras[index]
        sources = [self.sources[i] for i in index.tolist()]
        check_image_size(sources[0].path, cameras)
        shrunk = self._shrunk_sources(sources, downscale)
        if shrunk is not None:
            width, height, _ = image_info(shrunk[0].path)
            if (
                abs(width * downscale - cameras.width) >= downscale
                or abs(height * downscale - cameras.height) >= downscale
            ):
                raise Snap3dError(
                    f"image is {width}x{height}, not 1/{downscale:g} of the "
                    f"{cameras.width}x{cameras.height} original",
                    shrunk[0].path,
                )
            cameras, sources, resize = cameras.resized(width, height), shrunk, 1.0
        else:
            cameras, resize = cameras.rescaled(1.0 / downscale), downscale
        return SceneDataset(
            cameras,
            sources,
            split=split,
            bounds=self.bounds,
            root=self.root,
            layout=self.layout,
            background=parse_background(background),
            points=self.points,
            point_colors=self.point_colors,
            has_alpha=self.has_alpha,
            downscale=resize,
            cache_bytes=cache_bytes,
        )

    def _shrunk_sources(
        self, sources: list[ImageSource], downscale: float
    ) -> list[ImageSource] | None:
        """Sources pointing into ``<image_dir>_<downscale>`` if all those files exist."""
        if self.image_dir is None or downscale == 1 or downscale != int(downscale):
            return None
        shrunk_dir = self.image_dir.with_name(f"{self.image_dir.name}_{int(downscale)}")
        if not shrunk_dir.is_dir():
            return None
        shrunk = []
        for src in sources:
            if not src.path.is_relative_to(self.image_dir):
                return None
            path = shrunk_dir / src.path.relative_to(self.image_dir)
            if not path.is_file():
                return None
            shrunk.append(ImageSource(path, src.mask_path, src.depth_path))
        return shrunk


# -- helpers the loaders share ----------------------------------------------------------


def read_json(path: Path) -> dict:
    """The top-level object of a JSON file; Snap3dError naming it (with the line of a
    syntax error) when it is missing or malformed."""
    if not path.is_file():
        raise Snap3dError("file is missing", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise Snap3dError(
            f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}", path
        ) from None
    except UnicodeDecodeError as e:
        raise Snap3dError(f"not UTF-8 text: {e}", path) from None
    if not isinstance(data, dict):
        raise Snap3dError("expected a JSON object at the top level", path)
    return data


def require(mapping: dict, key: str, path: Path, where: str = "the file") -> object:
    """``mapping[key]``, or Snap3dError naming ``path`` and saying ``where`` it is missing."""
    if key not in mapping:
        raise Snap3dError(f"{where} has no {key!r}", path)
    return mapping[key]


def as_number(value: object, key: str, path: Path, where: str = "the file") -> float:
    """A JSON number as a float, or Snap3dError naming ``path`` and ``where`` ``key`` is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Snap3dError(f"{where}: {key!r} must be a number, got {value!r}", path)
    return float(value)


def image_info(path: Path) -> tuple[int, int, bool]:
    """(width, height, has_alpha) of an image file, from its header alone."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise Snap3dError("image file is missing", path)
    try:
        with Image.open(path) as im:
            alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            return im.width, im.height, alpha
    except (UnidentifiedImageError, OSError) as e:
        raise Snap3dError(f"cannot read image: {e}", path) from None


def check_image_size(path: Path, cameras: Cameras) -> None:
    """Raise Snap3dError naming the image when its size is not its camera's."""
    width, height, _ = image_info(path)
    if (width, height) != (cameras.width, cameras.height):
        raise Snap3dError(
            f"image is {width}x{height} but its camera is {cameras.width}x{cameras.height} "
            "(from the scene's intrinsics)",
            path,
        )


def image_file(root: Path, file_path: str) -> Path:
    """Resolve a frame's ``file_path`` against ``root``; Blender files name their PNGs
    without the extension, so a path without one gets ``.png``."""
    path = root / file_path
    return path if path.suffix else path.with_name(path.name + ".png")


def holdout_splits(n: int) -> dict[str, Tensor]:
    """Every ``HOLDOUT_EVERY``-th of n frames, from the first, as val and test; the rest
    as train (the module docstring gives the convention)."""
    index = torch.arange(n)
    held_out = index[index % HOLDOUT_EVERY == 0]
    return {"train": index[index % HOLDOUT_EVERY != 0], "val": held_out, "test": held_out}


def normalised_times(times: Tensor, path: Path) -> Tensor:
    """[N] frame times mapped to [0,1]: kept when already inside it (as D-NeRF and
    nerfstudio write them), else rescaled from their [min, max]. ``path`` is named when a
    time is not finite."""
    if not bool(torch.isfinite(times).all()):
        raise Snap3dError("a frame time is NaN or infinite", path)
    if times.numel() == 0 or bool(((times >= 0) & (times <= 1)).all()):
        return times
    lo, hi = times.min(), times.max()
    return (times - lo) / (hi - lo) if hi > lo else torch.zeros_like(times)


def check_poses(poses: Tensor, names: Sequence[str], path: Path) -> None:
    """Raise Snap3dError naming ``path`` and the frame when a pose [N,...] (a matrix or a
    row of a pose file) has a NaN or infinite value."""
    bad = ~torch.isfinite(poses).flatten(1).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise Snap3dError(f"the pose of {names[i]!r} has NaN or infinite values", path)
