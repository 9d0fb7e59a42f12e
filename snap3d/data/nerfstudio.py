"""nerfstudio scenes: one ``transforms.json`` (as ns-process-data writes it).

What is read, and how:

- ``frames``: ``file_path`` (relative to the json's folder) and ``transform_matrix``
  (camera-to-world, 4x4 or 3x4, OpenGL axes: x right, y up, looking down -z), converted
  to OpenCV. Frames are sorted by ``file_path``, as nerfstudio does.
- Intrinsics ``fl_x fl_y cx cy w h k1 k2 k3 k4 p1 p2``: a frame's own value wins over the
  top-level one. Missing ``cx``/``cy`` default to the image centre, a missing ``fl_y`` to
  ``fl_x``, a missing ``fl_x`` comes from ``camera_angle_x`` (instant-ngp files), and a
  missing ``w``/``h`` from the image file.
- ``camera_model``: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV (default) give
  our PINHOLE, or OPENCV when a distortion value is not zero (k3/k4 are not supported for
  them); OPENCV_FISHEYE gives OPENCV_FISHEYE (k1..k4; p1/p2 must be zero).
- ``train_filenames``/``val_filenames``/``test_filenames`` give the splits. When only some
  are listed, a missing val takes test's frames and vice versa, and a missing train (or
  missing val and test) takes the frames the others do not list. With none listed, the
  held-out convention of ``snap3d.data.scene`` applies (every 8th frame).
- ``mask_path`` (0 = ignore, 255 = keep; used as alpha) and ``depth_file_path``, on every
  frame or on none. ``time`` likewise, normalised to [0,1] (multi-view video).
- ``ply_file_path``: the initial point cloud (x y z, red green blue). nerfstudio writes it
  in the frame of the saved poses: ``applied_transform`` (the 3x4 that took the original,
  e.g. COLMAP, world to the saved one) has already been applied to both the poses and the
  points, and nerfstudio's own loader only applies its auto-orientation on top. snap3d
  keeps the saved frame, so it applies nothing and ignores ``applied_transform``.
- Shrunk copies of ``images/`` in ``images_2``, ``images_4``, ... are used for those
  downscales.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from snap3d.cameras import Cameras, opengl_to_opencv
from snap3d.data.dataset import ImageSource
from snap3d.data.points import bounds_from_cameras, bounds_from_points, read_ply_points
from snap3d.data.scene import (
    ParsedScene,
    as_number,
    check_poses,
    holdout_splits,
    image_file,
    image_info,
    normalised_times,
    read_json,
    require,
)
from snap3d.errors import Snap3dError

PERSPECTIVE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
FISHEYE_MODELS = ("OPENCV_FISHEYE",)
_SPLITS = ("train", "val", "test")
_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
_INTRINSICS = (
    "w",
    "h",
    "fl_x",
    "fl_y",
    "cx",
    "cy",
    "camera_angle_x",
    "camera_angle_y",
    *_DISTORTION,
)


def read_nerfstudio(path: Path) -> ParsedScene:
    """Read a nerfstudio scene from its folder or its ``transforms.json`` file."""
    file = path if path.suffix == ".json" else path / "transforms.json"
    root = file.parent
    meta = read_json(file)
    frames = sorted(frame_list(meta, file), key=lambda f: str(f["file_path"]))
    if not frames:
        raise Snap3dError("'frames' is empty", file)
    paths, camtoworlds, times = read_frames(frames, root, file)
    masks = _optional_files(frames, "mask_path", root, file)
    depths = _optional_files(frames, "depth_file_path", root, file)
    cameras = Cameras(
        camtoworlds.float(),
        *_intrinsics(frames, meta, paths, file),
        times=None if times is None else normalised_times(times, file).float(),
    )
    points = colors = None
    if "ply_file_path" in meta:
        points, colors = read_ply_points(root / str(meta["ply_file_path"]))
        if len(points) == 0:
            points = colors = None
    return ParsedScene(
        layout="nerfstudio",
        root=root,
        cameras=cameras,
        sources=[ImageSource(p, m, d) for p, m, d in zip(paths, masks, depths, strict=True)],
        splits=_splits(meta, paths, root, file),
        split_files=dict.fromkeys((*_SPLITS, "all"), file),
        bounds=bounds_from_cameras(cameras) if points is None else bounds_from_points(points),
        points=points,
        point_colors=colors,
        has_alpha=masks[0] is not None or image_info(paths[0])[2],
        image_dir=root / "images",
    )


def frame_list(meta: dict, path: Path) -> list[dict]:
    """The ``frames`` of a transforms file, checked to be objects with a ``file_path``."""
    frames = require(meta, "frames", path)
    if not isinstance(frames, list) or not all(isinstance(f, dict) for f in frames):
        raise Snap3dError("'frames' must be a list of objects", path)
    for i, frame in enumerate(frames):
        require(frame, "file_path", path, f"frame {i}")
    return frames


def read_frames(
    frames: list[dict], root: Path, path: Path
) -> tuple[list[Path], Tensor, Tensor | None]:
    """Images and poses of the frames of a transforms file (nerfstudio, Blender, D-NeRF).

    Returns:
        image paths (N), camtoworlds [N,4,4] float64 in OpenCV axes, and the frames'
        ``time`` values [N] float64 as written, or None when they have none.
    """
    paths, poses = [], []
    for frame in frames:
        where = f"frame {frame['file_path']!r}"
        paths.append(image_file(root, str(frame["file_path"])))
        poses.append(_pose(require(frame, "transform_matrix", path, where), path, where))
    camtoworlds = opengl_to_opencv(torch.stack(poses)) if poses else torch.zeros(0, 4, 4)
    check_poses(camtoworlds, [str(f["file_path"]) for f in frames], path)
    timed = ["time" in f for f in frames]
    if not any(timed):
        return paths, camtoworlds, None
    if not all(timed):
        i = timed.index(False)
        raise Snap3dError(f"frame {frames[i]['file_path']!r} has no 'time' but others do", path)
    times = [as_number(f["time"], "time", path, f"frame {f['file_path']!r}") for f in frames]
    return paths, camtoworlds, torch.tensor(times, dtype=torch.float64)


def _pose(value: object, path: Path, where: str) -> Tensor:
    """A 4x4 (or 3x4, completed) float64 matrix from a JSON ``transform_matrix``."""
    try:
        matrix = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape not in ((4, 4), (3, 4)):
        raise Snap3dError(f"{where}: 'transform_matrix' must be a 4x4 matrix of numbers", path)
    if matrix.shape == (3, 4):
        matrix = torch.cat([matrix, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
    return matrix


def _intrinsics(
    frames: list[dict], meta: dict, paths: list[Path], path: Path
) -> tuple[Tensor, int, int, str, Tensor | None]:
    """(Ks [N,3,3], width, height, camera model, distortion [N,4] or None) of the frames."""
    sizes, Ks, dists = [], [], []
    for i, frame in enumerate(frames):
        where = f"frame {frame['file_path']!r}"
        values = {
            key: as_number(v, key, path, where)
            for key, v in {**meta, **frame}.items()
            if key in _INTRINSICS
        }
        w, h = values.get("w"), values.get("h")
        if w is None or h is None:
            w, h, _ = image_info(paths[i])
        sizes.append((int(w), int(h)))
        if "fl_x" in values:
            fx = values["fl_x"]
        elif "camera_angle_x" in values:
            fx = 0.5 * w / math.tan(0.5 * values["camera_angle_x"])
        else:
            raise Snap3dError(f"{where} has no 'fl_x' (nor 'camera_angle_x')", path)
        if "fl_y" in values:
            fy = values["fl_y"]
        elif "camera_angle_y" in values:
            fy = 0.5 * h / math.tan(0.5 * values["camera_angle_y"])
        else:
            fy = fx
        cx, cy = values.get("cx", w / 2), values.get("cy", h / 2)
        Ks.append([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        dists.append([values.get(k, 0.0) for k in _DISTORTION])
    for i, size in enumerate(sizes):
        if size != sizes[0]:
            raise Snap3dError(
                f"frames have different image sizes: {sizes[0][0]}x{sizes[0][1]} "
                f"({frames[0]['file_path']!r}) and {size[0]}x{size[1]} "
                f"({frames[i]['file_path']!r}); snap3d cameras share one size, so resize "
                "the images to one size or split the scene",
                path,
            )
    model, distortion = _camera_model(meta, torch.tensor(dists, dtype=torch.float64), path)
    return torch.tensor(Ks), sizes[0][0], sizes[0][1], model, distortion


def _camera_model(meta: dict, dists: Tensor, path: Path) -> tuple[str, Tensor | None]:
    """Our camera model and distortion [N,4] from nerfstudio's model and dists [N,6]
    (k1, k2, k3, k4, p1, p2)."""
    name = meta.get("camera_model", "OPENCV")
    k1, k2, k3, k4, p1, p2 = dists.unbind(-1)
    if name in PERSPECTIVE_MODELS:
        if bool((k3 != 0).any() or (k4 != 0).any()):
            raise Snap3dError(f"k3/k4 distortion is not supported for {name} cameras", path)
        distortion = torch.stack([k1, k2, p1, p2], -1).float()
        return ("OPENCV", distortion) if bool(distortion.any()) else ("PINHOLE", None)
    if name in FISHEYE_MODELS:
        if bool((p1 != 0).any() or (p2 != 0).any()):
            raise Snap3dError(f"p1/p2 distortion is not supported for {name} cameras", path)
        return "OPENCV_FISHEYE", torch.stack([k1, k2, k3, k4], -1).float()
    raise Snap3dError(
        f"camera model {name!r} is not supported; snap3d reads "
        f"{', '.join(PERSPECTIVE_MODELS + FISHEYE_MODELS)}",
        path,
    )


def _optional_files(frames: list[dict], key: str, root: Path, path: Path) -> list[Path | None]:
    """Per-frame ``root / frame[key]``, for a key that every frame or none must have."""
    present = [key in f for f in frames]
    if not any(present):
        return [None] * len(frames)
    if not all(present):
        i = present.index(False)
        raise Snap3dError(f"frame {frames[i]['file_path']!r} has no {key!r} but others do", path)
    return [root / str(f[key]) for f in frames]


def _splits(meta: dict, paths: list[Path], root: Path, path: Path) -> dict[str, Tensor]:
    """Split indices from ``<split>_filenames`` (see the module docstring)."""
    listed = {s: meta[f"{s}_filenames"] for s in _SPLITS if f"{s}_filenames" in meta}
    if not listed:
        return holdout_splits(len(paths))
    index_of = {os.path.normpath(p): i for i, p in enumerate(paths)}
    splits: dict[str, Tensor] = {}
    for split, names in listed.items():
        if not isinstance(names, list):
            raise Snap3dError(f"'{split}_filenames' must be a list of file names", path)
        index = []
        for name in names:
            i = index_of.get(os.path.normpath(image_file(root, str(name))))
            if i is None:
                raise Snap3dError(f"'{split}_filenames' lists {name!r}, which no frame has", path)
            index.append(i)
        splits[split] = torch.tensor(sorted(index), dtype=torch.long)
    if "val" not in splits and "test" in splits:
        splits["val"] = splits["test"]
    if "test" not in splits and "val" in splits:
        splits["test"] = splits["val"]
    everything = torch.arange(len(paths))
    for missing, others in (("train", ("val", "test")), ("val", ("train",)), ("test", ("train",))):
        if missing not in splits:
            used = torch.cat([splits[s] for s in others if s in splits])
            splits[missing] = everything[~torch.isin(everything, used)]
    return splits
