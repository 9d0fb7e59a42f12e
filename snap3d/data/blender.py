"""Blender synthetic (NeRF) scenes and D-NeRF, their dynamic variant.

Layout: ``transforms_train.json``, ``transforms_val.json``, ``transforms_test.json``, one
per split, each with ``camera_angle_x`` (horizontal field of view in radians; focal
length ``0.5 * w / tan(0.5 * camera_angle_x)``, principal point at the image centre) and
``frames`` of ``file_path`` (without extension: ``.png`` is added) and
``transform_matrix`` (OpenGL camera-to-world). D-NeRF adds a per-frame ``time``, already
in [0,1] (normalised over all splits otherwise).

Images are RGBA; SceneDataset composites them over the chosen background. The scene box
is nerfstudio's fixed [-1.5, 1.5]^3 for these scenes. A missing val file takes the test
frames and a missing test file the val frames.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from snap3d.cameras import Cameras, intrinsics_matrix
from snap3d.data.dataset import ImageSource
from snap3d.data.nerfstudio import frame_list, read_frames
from snap3d.data.scene import (
    ParsedScene,
    as_number,
    image_info,
    normalised_times,
    read_json,
    require,
)
from snap3d.errors import Snap3dError

BLENDER_BOUNDS = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])
_SPLITS = ("train", "val", "test")


def split_file(root: Path, split: str) -> Path:
    return root / f"transforms_{split}.json"


def is_dnerf(root: Path) -> bool:
    """Whether the Blender-layout scene in ``root`` is D-NeRF (its frames have times)."""
    file = split_file(root, "train")
    return any("time" in f for f in frame_list(read_json(file), file))


def read_blender(root: Path) -> ParsedScene:
    """Read a Blender or D-NeRF scene folder (layout "dnerf" when frames have ``time``)."""
    files = {s: split_file(root, s) for s in _SPLITS}
    if not files["val"].is_file() and files["test"].is_file():
        files["val"] = files["test"]
    elif not files["test"].is_file() and files["val"].is_file():
        files["test"] = files["val"]
    size = None
    chunks: dict[Path, torch.Tensor] = {}  # each file's frames, as indices into all frames
    sources, camtoworlds, Ks, file_times = [], [], [], []
    for file in dict.fromkeys(files.values()):  # train first; val and test may share a file
        if file != files["train"] and not file.is_file():
            continue
        meta = read_json(file)
        frames = frame_list(meta, file)
        paths, c2w, frame_times = read_frames(frames, root, file)
        chunks[file] = torch.arange(len(sources), len(sources) + len(frames))
        if not frames:
            continue
        width, height, _ = image_info(paths[0])
        if size is not None and (width, height) != size:
            raise Snap3dError(
                f"its images are {width}x{height} but the train images are "
                f"{size[0]}x{size[1]}; snap3d cameras share one size",
                file,
            )
        size = (width, height)
        angle = as_number(require(meta, "camera_angle_x", file), "camera_angle_x", file)
        focal = 0.5 * width / math.tan(0.5 * angle)
        Ks.append(intrinsics_matrix(focal, focal, width / 2, height / 2, len(frames)))
        sources += [ImageSource(p) for p in paths]
        camtoworlds.append(c2w)
        file_times.append((file, frame_times))
    if size is None:
        raise Snap3dError("'frames' is empty", files["train"])
    untimed = [file for file, t in file_times if t is None]
    if untimed and len(untimed) < len(file_times):
        raise Snap3dError("its frames have no 'time' but other split files' do", untimed[0])
    times = None
    if not untimed:
        times = normalised_times(torch.cat([t for _, t in file_times]), files["train"]).float()
    cameras = Cameras(torch.cat(camtoworlds).float(), torch.cat(Ks), *size, times=times)
    return ParsedScene(
        layout="blender" if times is None else "dnerf",
        root=root,
        cameras=cameras,
        sources=sources,
        splits={s: chunks.get(f, torch.zeros(0, dtype=torch.long)) for s, f in files.items()},
        split_files={**files, "all": files["train"]},
        bounds=BLENDER_BOUNDS.clone(),
        has_alpha=image_info(sources[0].path)[2],
    )
