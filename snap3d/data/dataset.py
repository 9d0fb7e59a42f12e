"""SceneDataset: cameras plus lazily loaded images, what every loader returns."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from snap3d.cameras import Cameras
from snap3d.errors import Snap3dError

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def parse_background(background: str | Sequence[float] | Tensor) -> Tensor:
    """'white' | 'black' | (r, g, b) in [0,1] -> [3] float tensor."""
    if isinstance(background, str) and "," in background:
        try:
            background = [float(v) for v in background.split(",")]
        except ValueError:
            raise Snap3dError(f"background {background!r} is not r,g,b numbers") from None
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise Snap3dError(f"unknown background {background!r}: use white, black or r,g,b")
        return torch.tensor(BACKGROUNDS[background])
    bg = torch.as_tensor(background, dtype=torch.float32).flatten()
    if bg.shape != (3,):
        raise Snap3dError(f"background must have 3 values, got {bg.tolist()}")
    return bg


@dataclass
class ImageSource:
    """Where one image comes from: a file plus an optional separate mask file."""

    path: Path
    mask_path: Path | None = None
    depth_path: Path | None = None


def read_image(path: Path, width: int | None = None, height: int | None = None) -> np.ndarray:
    """Read an image file as float32 [H,W,C] in [0,1] (C = 3 or 4), resized when asked.

    Raises Snap3dError naming the file when it is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise Snap3dError("image file is missing", path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = "RGBA" if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info else "RGB"
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / (65535.0 if arr.max() > 255 else 255.0)
                return np.repeat(arr[..., None], 3, axis=-1)
            im = im.convert(mode)
            if width is not None and height is not None and im.size != (width, height):
                im = im.resize((width, height), Image.Resampling.BOX)
            return np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise Snap3dError(f"cannot read image: {e}", path) from e


class SceneDataset:
    """One split of a scene: cameras and lazily loaded, cached images.

    Images are returned as float32 tensors [H,W,3] in [0,1], already composited over
    ``background`` when the files carry alpha; ``alpha(i)`` returns [H,W,1] in that
    case. Decoded images are kept in an LRU cache bounded by ``cache_bytes``.

    Attributes:
        cameras: Cameras of this split (N of them).
        split: "train", "val", "test" or "all".
        points: [P,3] initial point cloud (world) or None.
        point_colors: [P,3] in [0,1] or None.
        bounds: [2,3] scene box (min corner, max corner) in world units.
        background: [3] colour used to composite RGBA images.
        scene_scale: a characteristic length of the scene (the radius of the region the
            cameras observe); representations scale their learning rates by it.
        root: the scene folder.
        layout: which loader read it ("nerfstudio", "blender", ...).
    """

    def __init__(
        self,
        cameras: Cameras,
        sources: Sequence[ImageSource],
        *,
        split: str,
        bounds: Tensor,
        root: Path,
        layout: str,
        background: Tensor | None = None,
        points: Tensor | None = None,
        point_colors: Tensor | None = None,
        has_alpha: bool = False,
        downscale: float = 1.0,
        cache_bytes: int = 2 << 30,
        image_loader: Callable[[int], np.ndarray] | None = None,
    ):
        if len(cameras) != len(sources) and image_loader is None:
            raise Snap3dError(f"{len(cameras)} cameras but {len(sources)} images", root)
        if len(cameras) == 0:
            raise Snap3dError(f"the {split!r} split is empty", root)
        self.cameras = cameras
        self.sources = list(sources)
        self.split = split
        self.bounds = bounds.float()
        self.root = Path(root)
        self.layout = layout
        self.background = torch.ones(3) if background is None else background.float()
        self.points = points
        self.point_colors = point_colors
        self.has_alpha = has_alpha
        self.downscale = downscale
        self.cache_bytes = cache_bytes
        self._image_loader = image_loader
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.cameras)

    def __repr__(self) -> str:
        return (
            f"SceneDataset({self.layout}, split={self.split!r}, n={len(self)}, "
            f"{self.cameras.width}x{self.cameras.height}, root={str(self.root)!r})"
        )

    @property
    def times(self) -> Tensor | None:
        """[N] normalised times, or None for static scenes."""
        return self.cameras.times

    @property
    def scene_scale(self) -> float:
        extent = (self.bounds[1] - self.bounds[0]).norm().item() / 2
        return max(extent, 1e-6)

    def _raw(self, i: int) -> np.ndarray:
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        if self._image_loader is not None:
            arr = self._image_loader(i)
        else:
            arr = self._load_file(i)
        with self._lock:
            self._cache[i] = arr
            self._cached_bytes += arr.nbytes
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        return arr

    def _load_file(self, i: int) -> np.ndarray:
        src = self.sources[i]
        w, h = self.cameras.width, self.cameras.height
        if self.downscale == 1.0:
            arr = read_image(src.path)
            if arr.shape[:2] != (h, w):
                raise Snap3dError(
                    f"image is {arr.shape[1]}x{arr.shape[0]} but its camera says {w}x{h}",
                    src.path,
                )
        else:
            arr = read_image(src.path, w, h)
        if src.mask_path is not None:
            mask = read_image(src.mask_path, w, h)[..., :1]
            arr = np.concatenate([arr[..., :3], mask], axis=-1)
        return arr

    def image(self, i: int) -> Tensor:
        """[H,W,3] float32 in [0,1], composited over ``background`` when it has alpha."""
        arr = torch.from_numpy(self._raw(i))
        if arr.shape[-1] == 4:
            rgb, a = arr[..., :3], arr[..., 3:]
            return rgb * a + self.background * (1 - a)
        return arr[..., :3]

    def alpha(self, i: int) -> Tensor | None:
        """[H,W,1] float32 alpha in [0,1] when the image (or its mask) has one."""
        arr = self._raw(i)
        return torch.from_numpy(arr[..., 3:]) if arr.shape[-1] == 4 else None

    def rgba(self, i: int) -> Tensor:
        """[H,W,4] straight (not composited) colour and alpha; alpha 1 when absent."""
        arr = torch.from_numpy(self._raw(i))
        if arr.shape[-1] == 4:
            return arr
        return torch.cat([arr, torch.ones_like(arr[..., :1])], dim=-1)

    def images(self) -> Tensor:
        """[N,H,W,3] all images of the split (loads everything)."""
        return torch.stack([self.image(i) for i in range(len(self))])
