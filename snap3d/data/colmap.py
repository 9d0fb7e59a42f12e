"""COLMAP sparse models and LLFF ``poses_bounds.npy`` scenes.

COLMAP (layout "colmap"): ``sparse/0/`` (or ``sparse/``) holds ``cameras``, ``images``
and ``points3D`` as ``.bin`` or ``.txt`` (COLMAP's documented formats, read here with
``struct``; ``.bin`` wins when both exist). Images are ``images/<name>``, ordered by
name. COLMAP poses are world-to-camera in OpenCV axes (qvec w,x,y,z; tvec). Camera
models map to ours as:

- SIMPLE_PINHOLE, PINHOLE -> PINHOLE;
- SIMPLE_RADIAL (k), RADIAL (k1, k2) -> OPENCV (k1, k2, p1=0, p2=0); OPENCV -> OPENCV;
- SIMPLE_RADIAL_FISHEYE (k), RADIAL_FISHEYE (k1, k2), OPENCV_FISHEYE -> OPENCV_FISHEYE;
- the others (FULL_OPENCV, FOV, THIN_PRISM_FISHEYE, ...) are refused.

A scene whose cameras mix the perspective and fisheye families, or image sizes, is
refused too. ``points3D`` (with colours) is the initial point cloud and gives the bounds.

LLFF (layout "llff"): ``poses_bounds.npy`` [N,17], one row per image of ``images/``
(sorted by name): a 3x5 matrix, row-major, whose first three columns are the
camera-to-world rotation with the camera axes in LLFF's (down, right, back) order, the
fourth the camera centre and the fifth (height, width, focal) in pixels; then the near
and far depths of the scene seen by that image. The bounds enclose every view frustum
between those depths.

Both use the held-out split of ``snap3d.data.scene`` (every 8th image) and the shrunk
copies in ``images_2``, ``images_4``, ... for those downscales.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from snap3d.cameras import Cameras, colmap_to_camtoworlds
from snap3d.data.dataset import ImageSource
from snap3d.data.points import bounds_from_cameras, bounds_from_points
from snap3d.data.scene import ParsedScene, check_poses, holdout_splits, image_info
from snap3d.errors import Snap3dError

# COLMAP's camera models: id -> (name, number of parameters).
COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_NUM_PARAMS = dict(COLMAP_MODELS.values())

# Supported models: (our model, indices of fx, fy, cx, cy in the parameters, indices of
# the parameters filling our distortion vector from its start; the rest are zero).
_CONVERSIONS = {
    "SIMPLE_PINHOLE": ("PINHOLE", (0, 0, 1, 2), ()),
    "PINHOLE": ("PINHOLE", (0, 1, 2, 3), ()),
    "SIMPLE_RADIAL": ("OPENCV", (0, 0, 1, 2), (3,)),
    "RADIAL": ("OPENCV", (0, 0, 1, 2), (3, 4)),
    "OPENCV": ("OPENCV", (0, 1, 2, 3), (4, 5, 6, 7)),
    "OPENCV_FISHEYE": ("OPENCV_FISHEYE", (0, 1, 2, 3), (4, 5, 6, 7)),
    "SIMPLE_RADIAL_FISHEYE": ("OPENCV_FISHEYE", (0, 0, 1, 2), (3,)),
    "RADIAL_FISHEYE": ("OPENCV_FISHEYE", (0, 0, 1, 2), (3, 4)),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ColmapCamera(NamedTuple):
    model: str
    width: int
    height: int
    params: tuple[float, ...]


class ColmapImage(NamedTuple):
    """One registered image: world-to-camera rotation ``qvec`` (w,x,y,z) and ``tvec``."""

    name: str
    qvec: tuple[float, float, float, float]
    tvec: tuple[float, float, float]
    camera_id: int


class ColmapModel(NamedTuple):
    """A sparse model: cameras by id, images (in file order), and its points [P,3] with
    colours [P,3] uint8 (None when there is no points3D file)."""

    cameras: dict[int, ColmapCamera]
    images: list[ColmapImage]
    points: np.ndarray | None
    colors: np.ndarray | None
    files: dict[str, Path]  # "cameras", "images", "points3D" -> the file read


def sparse_dir(root: Path) -> Path | None:
    """The folder of the COLMAP model of a scene (``sparse/0`` or ``sparse``), if any."""
    for folder in (root / "sparse" / "0", root / "sparse"):
        if any((folder / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return folder
    return None


def read_colmap_model(folder: Path) -> ColmapModel:
    """Read ``cameras``, ``images`` and (when present) ``points3D`` from ``folder``."""
    files, parts = {}, []
    for name in ("cameras", "images", "points3D"):
        binary, text = folder / f"{name}.bin", folder / f"{name}.txt"
        file = binary if binary.is_file() or not text.is_file() else text
        if not file.is_file():
            if name == "points3D":
                parts.append((None, None))
                continue
            raise Snap3dError("file is missing", binary)
        files[name] = file
        reader = _BINARY_READERS[name] if file.suffix == ".bin" else _TEXT_READERS[name]
        try:
            parts.append(reader(file))
        except (struct.error, ValueError, IndexError, UnicodeDecodeError) as e:
            raise Snap3dError(f"malformed COLMAP {name} file: {e}", file) from None
    cameras, images, (points, colors) = parts
    return ColmapModel(cameras, images, points, colors, files)


# -- binary files: little-endian, as COLMAP's read_write_model.py documents them ---------


class _Reader:
    """Sequential ``struct`` reads from the bytes of a file."""

    def __init__(self, path: Path):
        self.data = path.read_bytes()
        self.offset = 0

    def read(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return values

    def skip(self, nbytes: int) -> None:
        self.offset += nbytes
        if self.offset > len(self.data):
            raise ValueError("file ends early")

    def string(self) -> str:
        end = self.data.index(b"\0", self.offset)
        value = self.data[self.offset : end].decode("utf-8")
        self.offset = end + 1
        return value


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path)
    cameras = {}
    for _ in range(r.read("Q")[0]):
        camera_id, model_id, width, height = r.read("iiQQ")
        if model_id not in COLMAP_MODELS:
            raise Snap3dError(f"camera {camera_id} has unknown model id {model_id}", path)
        name, num_params = COLMAP_MODELS[model_id]
        cameras[camera_id] = ColmapCamera(name, width, height, r.read("d" * num_params))
    return cameras


def _read_images_bin(path: Path) -> list[ColmapImage]:
    r = _Reader(path)
    images = []
    for _ in range(r.read("Q")[0]):
        _, qw, qx, qy, qz, tx, ty, tz, camera_id = r.read("idddddddi")
        name = r.string()
        r.skip(24 * r.read("Q")[0])  # 2D points: x, y (double), point3D id (int64)
        images.append(ColmapImage(name, (qw, qx, qy, qz), (tx, ty, tz), camera_id))
    return images


def _read_points_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    r = _Reader(path)
    rows = []
    for _ in range(r.read("Q")[0]):
        rows.append(r.read("QdddBBBd")[1:7])
        r.skip(8 * r.read("Q")[0])  # track: image id, point2D index (int32 each)
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return table[:, :3], table[:, 3:].astype(np.uint8)


# -- text files: one record per line, '#' comments ---------------------------------------


def _lines(path: Path) -> list[str]:
    return [
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")
    ]


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for line in _lines(path):
        if not line.strip():
            continue
        camera_id, model, width, height, *params = line.split()
        if model not in _NUM_PARAMS:
            raise Snap3dError(f"camera {camera_id} has unknown model {model!r}", path)
        if len(params) != _NUM_PARAMS[model]:
            raise ValueError(f"camera {camera_id}: {model} takes {_NUM_PARAMS[model]} parameters")
        cameras[int(camera_id)] = ColmapCamera(
            model, int(width), int(height), tuple(map(float, params))
        )
    return cameras


def _read_images_txt(path: Path) -> list[ColmapImage]:
    lines, images, i = _lines(path), [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        # Each image takes two lines; the second (its 2D points) may be empty.
        _, qw, qx, qy, qz, tx, ty, tz, camera_id, name = lines[i].split(maxsplit=9)
        qvec = (float(qw), float(qx), float(qy), float(qz))
        images.append(
            ColmapImage(name.strip(), qvec, (float(tx), float(ty), float(tz)), int(camera_id))
        )
        i += 2
    return images


def _read_points_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = [line.split()[1:7] for line in _lines(path) if line.strip()]
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return table[:, :3], table[:, 3:].astype(np.uint8)


_BINARY_READERS: dict[str, Callable] = {
    "cameras": _read_cameras_bin,
    "images": _read_images_bin,
    "points3D": _read_points_bin,
}
_TEXT_READERS: dict[str, Callable] = {
    "cameras": _read_cameras_txt,
    "images": _read_images_txt,
    "points3D": _read_points_txt,
}


# -- scenes -------------------------------------------------------------------------------


def read_colmap(root: Path) -> ParsedScene:
    """Read a COLMAP scene: ``sparse/0`` (or ``sparse``) and ``images/``."""
    folder = sparse_dir(root)
    if folder is None:
        raise Snap3dError("no COLMAP model (sparse/0/cameras.bin or .txt)", root)
    model = read_colmap_model(folder)
    images_file, cameras_file = model.files["images"], model.files["cameras"]
    images = sorted(model.images, key=lambda im: im.name)
    if not images:
        raise Snap3dError("the model has no registered images", images_file)
    for im in images:
        if im.camera_id not in model.cameras:
            raise Snap3dError(
                f"image {im.name!r} uses camera {im.camera_id}, which is not in {cameras_file.name}",
                images_file,
            )
    used = [model.cameras[im.camera_id] for im in images]
    for cam in used:
        if (cam.width, cam.height) != (used[0].width, used[0].height):
            raise Snap3dError(
                f"cameras have different image sizes: {used[0].width}x{used[0].height} and "
                f"{cam.width}x{cam.height}; snap3d cameras share one size, so undistort or "
                "resize the images to one size or split the scene",
                cameras_file,
            )
    camera_model, Ks, distortion = _colmap_intrinsics(used, cameras_file)
    qvecs = torch.tensor([im.qvec for im in images], dtype=torch.float64)
    tvecs = torch.tensor([im.tvec for im in images], dtype=torch.float64)
    names = [im.name for im in images]
    camtoworlds = colmap_to_camtoworlds(qvecs, tvecs)
    check_poses(camtoworlds, names, images_file)
    cameras = Cameras(
        camtoworlds.float(),
        Ks,
        used[0].width,
        used[0].height,
        camera_model,
        distortion,
    )
    points = colors = None
    if model.points is not None and len(model.points) > 0:
        points = torch.from_numpy(model.points).float()
        colors = torch.from_numpy(model.colors).float() / 255
    image_dir = root / "images"
    return ParsedScene(
        layout="colmap",
        root=root,
        cameras=cameras,
        sources=[ImageSource(image_dir / name) for name in names],
        splits=holdout_splits(len(images)),
        split_files=dict.fromkeys(("train", "val", "test", "all"), images_file),
        bounds=bounds_from_cameras(cameras) if points is None else bounds_from_points(points),
        points=points,
        point_colors=colors,
        has_alpha=image_info(image_dir / names[0])[2],
        image_dir=image_dir,
    )


def _colmap_intrinsics(
    cameras: list[ColmapCamera], path: Path
) -> tuple[str, Tensor, Tensor | None]:
    """(our camera model, Ks [N,3,3], distortion [N,4] or None) for per-image cameras."""
    for cam in cameras:
        if cam.model not in _CONVERSIONS:
            raise Snap3dError(
                f"camera model {cam.model} is not supported; snap3d reads {', '.join(_CONVERSIONS)}",
                path,
            )
    ours = {_CONVERSIONS[cam.model][0] for cam in cameras}
    if "OPENCV_FISHEYE" in ours and len(ours) > 1:
        raise Snap3dError("the model mixes fisheye and perspective cameras", path)
    Ks, dists = [], []
    for cam in cameras:
        _, (fx, fy, cx, cy), slots = _CONVERSIONS[cam.model]
        p = cam.params
        Ks.append([[p[fx], 0.0, p[cx]], [0.0, p[fy], p[cy]], [0.0, 0.0, 1.0]])
        dists.append([p[i] for i in slots] + [0.0] * (4 - len(slots)))
    distortion = torch.tensor(dists)
    if "OPENCV_FISHEYE" in ours:
        return "OPENCV_FISHEYE", torch.tensor(Ks), distortion
    if bool(distortion.any()):
        return "OPENCV", torch.tensor(Ks), distortion
    return "PINHOLE", torch.tensor(Ks), None


def read_llff(root: Path) -> ParsedScene:
    """Read an LLFF scene: ``poses_bounds.npy`` and ``images/``."""
    file = root / "poses_bounds.npy"
    try:
        table = np.load(file, allow_pickle=False)
    except FileNotFoundError:
        raise Snap3dError("file is missing", file) from None
    except (OSError, ValueError) as e:
        raise Snap3dError(f"cannot read: {e}", file) from None
    if table.ndim != 2 or table.shape[1] != 17 or len(table) == 0:
        raise Snap3dError(f"expected an [N,17] array, got shape {list(table.shape)}", file)
    image_dir = root / "images"
    paths = sorted(
        (p for p in image_dir.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )
    if len(paths) != len(table):
        raise Snap3dError(f"{len(table)} poses but {len(paths)} images in {image_dir}", file)
    table = torch.from_numpy(table.astype(np.float64))
    check_poses(table, [p.name for p in paths], file)
    poses, near_far = table[:, :15].reshape(-1, 3, 5), table[:, 15:]
    height, width, focal = poses[:, :, 4].unbind(-1)
    sizes = torch.stack([width, height], -1).round().long()
    different = (sizes != sizes[0]).any(-1)
    if bool(different.any()):
        w, h = sizes[int(different.nonzero()[0])].tolist()
        raise Snap3dError(
            f"images have different sizes: {width[0]:g}x{height[0]:g} and {w}x{h}; snap3d "
            "cameras share one size",
            file,
        )
    down, right, back, center = poses[:, :, 0], poses[:, :, 1], poses[:, :, 2], poses[:, :, 3]
    camtoworlds = torch.eye(4, dtype=torch.float64).repeat(len(table), 1, 1)
    camtoworlds[:, :3, 0], camtoworlds[:, :3, 1], camtoworlds[:, :3, 2] = right, down, -back
    camtoworlds[:, :3, 3] = center
    Ks = torch.zeros(len(table), 3, 3)
    Ks[:, 0, 0], Ks[:, 1, 1] = focal, focal
    Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = width / 2, height / 2, 1.0
    w, h = sizes[0].tolist()
    cameras = Cameras(camtoworlds.float(), Ks, w, h)
    return ParsedScene(
        layout="llff",
        root=root,
        cameras=cameras,
        sources=[ImageSource(p) for p in paths],
        splits=holdout_splits(len(table)),
        split_files=dict.fromkeys(("train", "val", "test", "all"), file),
        bounds=bounds_from_cameras(cameras, near_far.float()),
        has_alpha=image_info(paths[0])[2],
        image_dir=image_dir,
    )
