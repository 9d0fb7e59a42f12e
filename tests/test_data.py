"""Loaders: tiny scenes of every layout written here, read back and checked analytically."""

from __future__ import annotations

import json
import math
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from snap3d.cameras import camtoworlds_to_colmap, look_at
from snap3d.data import LAYOUTS, describe, detect_layout, load, read_scene
from snap3d.errors import Snap3dError

W, H = 8, 6
ASSETS = Path(__file__).resolve().parent.parent / "assets"
GL_FLIP = torch.tensor([1.0, -1.0, -1.0, 1.0])  # OpenCV <-> OpenGL: flip the y and z columns


# -- scene writers ----------------------------------------------------------------------


def orbit(n: int, radius: float = 4.0) -> torch.Tensor:
    """[n,4,4] OpenCV camtoworlds on a circle around the origin, looking at it, z up."""
    angles = torch.arange(n) * 2 * math.pi / n
    eyes = torch.stack([radius * angles.cos(), radius * angles.sin(), torch.full((n,), 1.0)], -1)
    return look_at(eyes, torch.zeros(n, 3))


def write_png(path: Path, value: int, mode: str = "RGB", size: tuple[int, int] = (W, H)):
    """A flat image (grey level ``value`` for "L"); RGBA ones get a transparent left half
    and a half-opaque column 4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.new("L", size, value).save(path)
        return
    pixels = np.zeros((size[1], size[0], len(mode)), np.uint8)
    pixels[..., :3] = (value, 2 * value % 256, 255 - value)
    if mode == "RGBA":
        pixels[..., 3] = 255
        pixels[:, : size[0] // 2, 3] = 0
        pixels[:, 4, 3] = 128
    Image.fromarray(pixels, mode).save(path)


def gl_matrix(c2w: torch.Tensor) -> list:
    return (c2w * GL_FLIP).tolist()


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def write_ply_ascii(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    header = (
        f"ply\nformat ascii 1.0\nelement vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    rows = [f"{x} {y} {z} {r} {g} {b}" for (x, y, z), (r, g, b) in zip(points, colors, strict=True)]
    path.write_text(header + "\n".join(rows) + "\n")


def nerfstudio_scene(root: Path, n: int = 10, **extra) -> torch.Tensor:
    """n frames written out of name order; returns their camtoworlds in name order."""
    c2w = orbit(n)
    frames = []
    for i in reversed(range(n)):
        write_png(root / "images" / f"frame_{i:03d}.png", 10 * i)
        frames.append(
            {"file_path": f"images/frame_{i:03d}.png", "transform_matrix": gl_matrix(c2w[i])}
        )
    meta = {"fl_x": 7.0, "fl_y": 6.5, "cx": 4.25, "cy": 2.75, "w": W, "h": H, "frames": frames}
    write_json(root / "transforms.json", {**meta, **extra})
    return c2w


def blender_scene(root: Path, counts=(("train", 4), ("val", 2), ("test", 3)), times=None):
    """Blender (or, with ``times [n]`` per split, D-NeRF) scene; returns split -> c2w."""
    out = {}
    for k, (split, n) in enumerate(counts):
        c2w = orbit(n, radius=3.0 + k)
        frames = []
        for i in range(n):
            write_png(root / split / f"r_{i}.png", 20 * i + k, "RGBA")
            frame = {
                "file_path": f"./{split}/r_{i}",
                "rotation": 0.01,
                "transform_matrix": gl_matrix(c2w[i]),
            }
            if times is not None:
                frame["time"] = float(times[split][i])
            frames.append(frame)
        write_json(root / f"transforms_{split}.json", {"camera_angle_x": 0.8, "frames": frames})
        out[split] = c2w
    return out


# COLMAP model ids used below.
SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, OPENCV, FULL_OPENCV, SIMPLE_RADIAL_FISHEYE = (
    0,
    1,
    2,
    4,
    6,
    8,
)
MODEL_NAMES = {
    0: "SIMPLE_PINHOLE",
    1: "PINHOLE",
    2: "SIMPLE_RADIAL",
    4: "OPENCV",
    6: "FULL_OPENCV",
    8: "SIMPLE_RADIAL_FISHEYE",
}


def write_colmap(folder: Path, cameras: list, images: list, points: list, binary: bool) -> None:
    """A COLMAP model in COLMAP's documented .bin or .txt format.

    cameras: (camera_id, model_id, width, height, params);
    images: (image_id, qvec, tvec, camera_id, name, [(x, y, point3D_id)]);
    points: (point3D_id, xyz, rgb, error, [(image_id, point2D_idx)]).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        data = struct.pack("<Q", len(cameras))
        for cid, mid, w, h, params in cameras:
            data += struct.pack("<iiQQ", cid, mid, w, h) + struct.pack(f"<{len(params)}d", *params)
        (folder / "cameras.bin").write_bytes(data)
        data = struct.pack("<Q", len(images))
        for iid, q, t, cid, name, pts in images:
            data += struct.pack("<idddddddi", iid, *q, *t, cid) + name.encode() + b"\0"
            data += struct.pack("<Q", len(pts)) + b"".join(struct.pack("<ddq", *p) for p in pts)
        (folder / "images.bin").write_bytes(data)
        data = struct.pack("<Q", len(points))
        for pid, xyz, rgb, err, track in points:
            data += struct.pack("<QdddBBBd", pid, *xyz, *rgb, err)
            data += struct.pack("<Q", len(track)) + b"".join(struct.pack("<ii", *t) for t in track)
        (folder / "points3D.bin").write_bytes(data)
        return
    lines = [
        "# Camera list with one line of data per camera:",
        "# CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
    ]
    lines += [
        " ".join(map(str, [cid, MODEL_NAMES[mid], w, h, *params]))
        for cid, mid, w, h, params in cameras
    ]
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = [
        "# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
    ]
    for iid, q, t, cid, name, pts in images:
        lines.append(" ".join(map(str, [iid, *q, *t, cid, name])))
        lines.append(" ".join(f"{x} {y} {p}" for x, y, p in pts))  # may be empty
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    for pid, xyz, rgb, err, track in points:
        lines.append(" ".join(map(str, [pid, *xyz, *rgb, err, *[v for t in track for v in t]])))
    (folder / "points3D.txt").write_text("\n".join(lines) + "\n")


def colmap_scene(
    root: Path, binary: bool = True, n: int = 9, cameras=None, sparse: str = "sparse/0"
):
    """n images named out of order, with a cloud of 50 points; returns (c2w, xyz, rgb)."""
    c2w = orbit(n)
    qvecs, tvecs = camtoworlds_to_colmap(c2w.double())
    images = []
    for i in reversed(range(n)):
        write_png(root / "images" / f"img_{i:02d}.png", 10 * i)
        pts = [(1.5, 2.5, 7)] if i % 2 else []
        images.append(
            (i + 1, qvecs[i].tolist(), tvecs[i].tolist(), 1 + i % 2, f"img_{i:02d}.png", pts)
        )
    if cameras is None:
        cameras = [
            (1, PINHOLE, W, H, [7.0, 6.5, 4.25, 2.75]),
            (2, SIMPLE_RADIAL, W, H, [7.5, 4.0, 3.0, 0.05]),
        ]
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1, 1, (50, 3))
    rgb = rng.integers(0, 256, (50, 3))
    points = [(k + 1, xyz[k].tolist(), rgb[k].tolist(), 0.5, [(1, 0), (2, 3)]) for k in range(50)]
    write_colmap(root / sparse, cameras, images, points, binary)
    return c2w, xyz, rgb


def llff_scene(root: Path, n: int = 9) -> tuple[torch.Tensor, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    c2w = orbit(n).double()
    right, down, forward, center = c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3]
    hwf = torch.tensor([H, W, 5.0], dtype=torch.float64).expand(n, 3)
    poses = torch.stack([down, right, -forward, center, hwf], -1)  # [n,3,5]: LLFF's columns
    near_far = np.stack([np.full(n, 2.0), np.full(n, 6.0)], 1)
    np.save(root / "poses_bounds.npy", np.concatenate([poses.reshape(n, 15).numpy(), near_far], 1))
    for i in range(n):
        write_png(root / "images" / f"IMG_{i:04d}.JPG", 10 * i)  # PNG bytes, LLFF-like name
    return c2w.float(), near_far


def close(a, b, atol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=atol, rtol=1e-5
    )


@contextmanager
def raises(match: str, file: str):
    """pytest.raises for a Snap3dError whose message matches ``match`` and names ``file``."""
    with pytest.raises(Snap3dError, match=match) as info:
        yield info
    assert file in str(info.value), str(info.value)


# -- nerfstudio ---------------------------------------------------------------------------


def test_nerfstudio_cameras_splits_and_order(tmp_path):
    c2w = nerfstudio_scene(tmp_path)
    assert detect_layout(tmp_path) == "nerfstudio"
    assert detect_layout(tmp_path / "transforms.json") == "nerfstudio"
    every = load(tmp_path, "all")
    assert every.layout == "nerfstudio" and len(every) == 10
    close(every.cameras.camtoworlds, c2w)  # sorted by file name, OpenGL -> OpenCV
    close(every.cameras.Ks[0], [[7.0, 0, 4.25], [0, 6.5, 2.75], [0, 0, 1]])
    assert every.cameras.camera_model == "PINHOLE" and every.cameras.distortion is None
    assert [s.path.name for s in every.sources][:2] == ["frame_000.png", "frame_001.png"]
    # Every 8th frame from the first is held out, as val and as test.
    test, val, train = (
        load(tmp_path, "test"),
        load(tmp_path, "val"),
        load(tmp_path / "transforms.json"),
    )
    assert [s.path.name for s in test.sources] == ["frame_000.png", "frame_008.png"]
    assert [s.path.name for s in val.sources] == ["frame_000.png", "frame_008.png"]
    assert len(train) == 8 and "frame_000.png" not in [s.path.name for s in train.sources]
    close(test.cameras.camtoworlds, c2w[[0, 8]])
    # The first image's pixels: written with value 0.
    close(every.image(0)[0, 0], [0.0, 0.0, 1.0])
    assert every.image(0).shape == (H, W, 3) and every.alpha(0) is None


def test_nerfstudio_bounds_from_cameras_hold_the_focus(tmp_path):
    nerfstudio_scene(tmp_path)
    bounds = load(tmp_path).bounds
    # The cameras circle the origin at radius 4, looking at it.
    assert bool((bounds[0] <= torch.tensor([-4.0, -4.0, 0.0])).all())
    assert bool((bounds[1] >= torch.tensor([4.0, 4.0, 1.0])).all())
    assert float(bounds[1].sub(bounds[0]).max()) < 30


def test_nerfstudio_per_frame_intrinsics_distortion_masks_times_points(tmp_path):
    c2w = orbit(4)
    frames = []
    for i in range(4):
        write_png(tmp_path / "images" / f"f{i}.png", 50)
        write_png(tmp_path / "masks" / f"f{i}.png", 255 if i else 0, "L")
        frames.append(
            {
                "file_path": f"images/f{i}.png",
                "transform_matrix": gl_matrix(c2w[i])[:3],  # 3x4 is accepted
                "fl_x": 7.0 + i,
                "mask_path": f"masks/f{i}.png",
                "depth_file_path": f"depths/f{i}.png",
                "time": 2.0 + i,
            }
        )
    rng = np.random.default_rng(1)
    points = rng.normal(0, 1, (200, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (200, 3))
    write_ply_ascii(tmp_path / "sparse_pc.ply", points, colors)
    write_json(
        tmp_path / "transforms.json",
        {
            "w": W, "h": H, "fl_y": 6.0, "k1": 0.1, "p2": 0.01,
            "camera_model": "OPENCV",
            "applied_transform": [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0]],
            "ply_file_path": "sparse_pc.ply",
            "train_filenames": ["images/f1.png", "images/f2.png", "images/f3.png"],
            "test_filenames": ["images/f0.png"],
            "frames": frames,
        },
    )  # fmt: skip
    ds = load(tmp_path, "train", background="black")
    cams = ds.cameras
    assert len(ds) == 3 and cams.camera_model == "OPENCV"
    close(cams.Ks[:, 0, 0], [8.0, 9.0, 10.0])  # per frame
    close(cams.Ks[:, 1, 1], [6.0] * 3)  # global
    close(cams.Ks[0, :2, 2], [W / 2, H / 2])  # default principal point
    close(cams.distortion[0], [0.1, 0.0, 0.0, 0.01])
    close(cams.times, [1 / 3, 2 / 3, 1.0])  # 2..5 mapped to [0, 1] over all frames
    close(cams.camtoworlds, c2w[1:])
    assert ds.sources[0].depth_path == tmp_path / "depths" / "f1.png"
    # The mask is the alpha: f1's is opaque; f0 (test, val) is fully masked out.
    assert ds.has_alpha
    close(ds.alpha(0), torch.ones(H, W, 1))
    test = load(tmp_path, "val", background="black")  # no val list: val is test
    close(test.alpha(0), torch.zeros(H, W, 1))
    close(test.image(0), torch.zeros(H, W, 3))
    # The cloud is in the frame of the poses: no applied_transform on top.
    close(ds.points, points)
    close(ds.point_colors, colors / 255)
    lo, hi = np.percentile(points, [1, 99], axis=0)
    margin = 0.1 * (hi - lo).max()
    close(ds.bounds, np.stack([lo - margin, hi + margin]), atol=1e-4)
    info = describe(tmp_path)
    assert info["frames"] == {"train": 3, "val": 1, "test": 1, "all": 4}
    assert info["has_masks"] and info["has_depths"] and info["num_points"] == 200
    assert info["fx"] == [7.0, 10.0] and info["times"] == [0.0, 1.0]


def test_nerfstudio_fisheye_and_instant_ngp_fields(tmp_path):
    c2w = orbit(3)
    for i in range(3):
        write_png(tmp_path / "images" / f"{i}.png", 0)
    frames = [
        {"file_path": f"images/{i}.png", "transform_matrix": gl_matrix(c2w[i])} for i in range(3)
    ]
    write_json(
        tmp_path / "transforms.json",
        {
            "camera_model": "OPENCV_FISHEYE",
            "camera_angle_x": 1.0,
            "k1": 0.05,
            "k3": 0.01,
            "frames": frames,
        },
    )
    cams = read_scene(tmp_path).cameras
    assert cams.camera_model == "OPENCV_FISHEYE" and (cams.width, cams.height) == (
        W,
        H,
    )  # from the image
    close(cams.Ks[0, 0, 0], 0.5 * W / math.tan(0.5))
    close(cams.Ks[0, 1, 1], cams.Ks[0, 0, 0])
    close(cams.distortion[0], [0.05, 0.0, 0.01, 0.0])


def test_nerfstudio_splits_from_some_lists(tmp_path):
    nerfstudio_scene(tmp_path, n=5, val_filenames=["images/frame_003.png"])
    scene = read_scene(tmp_path)
    assert scene.splits["val"].tolist() == [3] and scene.splits["test"].tolist() == [3]
    assert scene.splits["train"].tolist() == [0, 1, 2, 4]


def test_downscale_resizes_at_load(tmp_path):
    nerfstudio_scene(tmp_path)
    ds = load(tmp_path, "all", downscale=2)
    assert (ds.cameras.width, ds.cameras.height) == (4, 3)
    close(ds.cameras.Ks[0], [[3.5, 0, 2.125], [0, 3.25, 1.375], [0, 0, 1]])
    assert ds.image(0).shape == (3, 4, 3)
    odd = load(tmp_path, "all", downscale=1.5)
    assert odd.image(1).shape == (4, 5, 3)
    with pytest.raises(Snap3dError, match="downscale"):
        load(tmp_path, downscale=0)


# -- Blender and D-NeRF --------------------------------------------------------------------


def test_blender_splits_focal_and_compositing(tmp_path):
    poses = blender_scene(tmp_path)
    assert detect_layout(tmp_path) == "blender"
    assert detect_layout(tmp_path / "transforms_val.json") == "blender"
    train = load(tmp_path)
    assert train.layout == "blender" and len(train) == 4 and train.has_alpha
    close(train.cameras.camtoworlds, poses["train"])
    focal = 0.5 * W / math.tan(0.4)
    close(train.cameras.Ks[0], [[focal, 0, W / 2], [0, focal, H / 2], [0, 0, 1]])
    assert train.sources[1].path == tmp_path / "train" / "r_1.png"
    close(train.bounds, [[-1.5] * 3, [1.5] * 3])
    # Transparent left half -> background; column 4 is half opaque.
    rgba = train.rgba(1)
    rgb = rgba[0, 5, :3]
    close(train.image(1)[0, 0], [1.0, 1.0, 1.0])
    close(train.image(1)[0, 5], rgb)
    a = 128 / 255
    close(train.image(1)[0, 4], rgb * a + (1 - a))
    black = load(tmp_path, background="black")
    close(black.image(1)[0, 0], [0.0, 0.0, 0.0])
    close(black.image(1)[0, 4], rgb * a)
    close(black.alpha(1)[0, :, 0], [0, 0, 0, 0, a, 1, 1, 1])
    custom = load(tmp_path, background=(0.2, 0.4, 0.6))
    close(custom.image(0)[3, 1], [0.2, 0.4, 0.6])
    # The splits come from the three files; "all" is them in order.
    close(load(tmp_path, "test").cameras.camtoworlds, poses["test"])
    everything = load(tmp_path, "all")
    assert len(everything) == 9
    close(everything.cameras.camtoworlds[4:6], poses["val"])


def test_blender_without_val_uses_test(tmp_path):
    poses = blender_scene(tmp_path, counts=(("train", 3), ("test", 2)))
    close(load(tmp_path, "val").cameras.camtoworlds, poses["test"])
    assert describe(tmp_path)["frames"] == {"train": 3, "val": 2, "test": 2, "all": 5}


def test_dnerf_times(tmp_path):
    times = {"train": [0.0, 0.5, 1.0, 0.25], "val": [0.1, 0.2], "test": [0.3, 0.6, 0.9]}
    blender_scene(tmp_path, times=times)
    assert detect_layout(tmp_path) == "dnerf"
    ds = load(tmp_path, "test")
    assert ds.layout == "dnerf"
    close(ds.times, times["test"])  # already in [0, 1]: kept
    assert describe(tmp_path)["times"] == [0.0, 1.0]


def test_dnerf_times_outside_unit_range_are_normalised(tmp_path):
    times = {"train": [10.0, 20.0, 30.0, 40.0], "val": [15.0, 25.0], "test": [50.0, 12.5, 30.0]}
    blender_scene(tmp_path, times=times)
    close(load(tmp_path, "train").times, [0.0, 0.25, 0.5, 0.75])
    close(load(tmp_path, "test").times, [1.0, 0.0625, 0.5])


# -- COLMAP and LLFF -----------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["bin", "txt"])
def test_colmap_model(tmp_path, binary):
    c2w, xyz, rgb = colmap_scene(tmp_path, binary)
    assert detect_layout(tmp_path) == "colmap"
    every = load(tmp_path, "all")
    assert every.layout == "colmap" and len(every) == 9
    assert [s.path.name for s in every.sources] == [f"img_{i:02d}.png" for i in range(9)]
    close(every.cameras.camtoworlds, c2w, atol=1e-5)
    # Even images use camera 1 (PINHOLE), odd ones camera 2 (SIMPLE_RADIAL): OPENCV for all.
    cams = every.cameras
    assert cams.camera_model == "OPENCV"
    close(cams.Ks[0], [[7.0, 0, 4.25], [0, 6.5, 2.75], [0, 0, 1]])
    close(cams.Ks[1], [[7.5, 0, 4.0], [0, 7.5, 3.0], [0, 0, 1]])
    close(cams.distortion[:2], [[0.0, 0, 0, 0], [0.05, 0, 0, 0]])
    close(every.points, xyz)
    close(every.point_colors, rgb / 255)
    test = load(tmp_path, "test")
    assert [s.path.name for s in test.sources] == ["img_00.png", "img_08.png"]
    assert len(load(tmp_path)) == 7


def test_colmap_sparse_without_subfolder_and_fisheye(tmp_path):
    cameras = [
        (1, SIMPLE_RADIAL_FISHEYE, W, H, [6.0, 4.0, 3.0, -0.02]),
        (2, SIMPLE_RADIAL_FISHEYE, W, H, [6.0, 4.0, 3.0, -0.02]),
    ]
    colmap_scene(tmp_path, cameras=cameras, sparse="sparse")
    cams = load(tmp_path, "all").cameras
    assert cams.camera_model == "OPENCV_FISHEYE"
    close(cams.distortion[0], [-0.02, 0, 0, 0])


def test_colmap_uses_shrunk_image_folders(tmp_path):
    colmap_scene(tmp_path)
    for i in range(9):
        write_png(tmp_path / "images_2" / f"img_{i:02d}.png", 10 * i, size=(4, 3))
    ds = load(tmp_path, "all", downscale=2)
    assert ds.sources[0].path == tmp_path / "images_2" / "img_00.png"
    assert (ds.cameras.width, ds.cameras.height) == (4, 3) and ds.downscale == 1.0
    close(ds.cameras.Ks[0], [[3.5, 0, 2.125], [0, 3.25, 1.375], [0, 0, 1]])
    assert ds.image(0).shape == (3, 4, 3)
    # No images_4: resized when loaded instead.
    quarter = load(tmp_path, "all", downscale=4)
    assert quarter.sources[0].path.parent.name == "images" and quarter.image(0).shape == (2, 2, 3)


def test_shrunk_folder_of_the_wrong_size_is_refused(tmp_path):
    colmap_scene(tmp_path)
    for i in range(9):
        write_png(tmp_path / "images_2" / f"img_{i:02d}.png", 0, size=(8, 6))
    with raises("not 1/2", "img_01.png"):  # the first train image
        load(tmp_path, downscale=2)


def test_llff(tmp_path):
    c2w, near_far = llff_scene(tmp_path)
    assert detect_layout(tmp_path) == "llff"
    every = load(tmp_path, "all")
    assert every.layout == "llff"
    close(every.cameras.camtoworlds, c2w)
    close(every.cameras.Ks[0], [[5.0, 0, W / 2], [0, 5.0, H / 2], [0, 0, 1]])
    assert [s.path.name for s in load(tmp_path, "test").sources] == ["IMG_0000.JPG", "IMG_0008.JPG"]
    # The bounds hold every camera and the scene between near and far in front of it.
    bounds = every.bounds
    for depth in near_far[0]:
        seen = every.cameras.centers + float(depth) * every.cameras.forward
        assert bool(((seen >= bounds[0] - 1e-5) & (seen <= bounds[1] + 1e-5)).all())


def test_colmap_is_preferred_to_poses_bounds(tmp_path):
    colmap_scene(tmp_path)
    np.save(tmp_path / "poses_bounds.npy", np.zeros((9, 17)))
    assert detect_layout(tmp_path) == "colmap"
    assert detect_layout(tmp_path / "poses_bounds.npy") == "llff"


# -- bad input: one test per case, each naming the offending file ----------------------------


def test_nothing_recognised(tmp_path):
    with raises("no scene found", tmp_path.name):
        load(tmp_path)
    with raises("no such file", "nowhere"):
        load(tmp_path / "nowhere")


def test_missing_transforms_file(tmp_path):
    with raises("no such file", "transforms.json"):
        load(tmp_path / "transforms.json")


def test_missing_split_file(tmp_path):
    blender_scene(tmp_path, counts=(("train", 2),))
    with raises("file is missing", "transforms_test.json"):
        load(tmp_path, "test")


def test_missing_image(tmp_path):
    nerfstudio_scene(tmp_path)
    (tmp_path / "images" / "frame_001.png").unlink()
    with raises("missing", "frame_001.png"):
        load(tmp_path)


def test_malformed_json_gives_the_line(tmp_path):
    (tmp_path / "transforms.json").write_text(
        '{\n  "frames": [\n    {"file_path": "a.png",,}\n  ]\n}\n'
    )
    with raises("line 3", "transforms.json"):
        load(tmp_path)


def test_missing_keys(tmp_path):
    write_json(tmp_path / "transforms.json", {"fl_x": 5.0})
    with raises("'frames'", "transforms.json"):
        load(tmp_path)
    write_json(
        tmp_path / "transforms.json", {"fl_x": 5.0, "frames": [{"file_path": "images/a.png"}]}
    )
    with raises("'transform_matrix'", "transforms.json"):
        load(tmp_path)
    blender_scene(tmp_path, counts=(("train", 2),))
    data = json.loads((tmp_path / "transforms_train.json").read_text())
    del data["camera_angle_x"]
    write_json(tmp_path / "transforms_train.json", data)
    with raises("'camera_angle_x'", "transforms_train.json"):
        read_scene(tmp_path / "transforms_train.json")


def test_missing_focal_length(tmp_path):
    nerfstudio_scene(tmp_path)
    data = json.loads((tmp_path / "transforms.json").read_text())
    del data["fl_x"]
    write_json(tmp_path / "transforms.json", data)
    with raises("'fl_x'", "transforms.json"):
        load(tmp_path)


def test_image_size_disagrees_with_intrinsics(tmp_path):
    nerfstudio_scene(tmp_path)
    write_png(tmp_path / "images" / "frame_001.png", 0, size=(16, 12))
    with raises("16x12 but its camera is 8x6", "frame_001.png"):
        load(tmp_path)
    # A later image is checked when it loads.
    write_png(tmp_path / "images" / "frame_001.png", 0)
    write_png(tmp_path / "images" / "frame_002.png", 0, size=(16, 12))
    ds = load(tmp_path)
    with raises("16x12", "frame_002.png"):
        ds.image(1)


def test_unknown_camera_model(tmp_path):
    nerfstudio_scene(tmp_path, camera_model="EQUIRECTANGULAR")
    with raises("EQUIRECTANGULAR", "transforms.json"):
        load(tmp_path)
    colmap_scene(
        tmp_path / "c", cameras=[(1, FULL_OPENCV, W, H, [1.0] * 12), (2, PINHOLE, W, H, [1.0] * 4)]
    )
    with raises("FULL_OPENCV is not supported", "cameras.bin"):
        load(tmp_path / "c")


def test_unsupported_distortion(tmp_path):
    nerfstudio_scene(tmp_path, k3=0.1)
    with raises("k3", "transforms.json"):
        load(tmp_path)


def test_empty_split(tmp_path):
    nerfstudio_scene(tmp_path, train_filenames=["images/frame_001.png"], test_filenames=[])
    with raises("'test' split has no frames", "transforms.json"):
        load(tmp_path, "test")
    with raises("unknown split", ""):
        load(tmp_path, "bogus")


def test_split_list_names_unknown_file(tmp_path):
    nerfstudio_scene(tmp_path, train_filenames=["images/nope.png"])
    with raises("nope.png", "transforms.json"):
        load(tmp_path)


def test_nan_in_pose(tmp_path):
    nerfstudio_scene(tmp_path)
    text = (tmp_path / "transforms.json").read_text()
    data = json.loads(text)
    data["frames"][3]["transform_matrix"][0][3] = float("nan")
    (tmp_path / "transforms.json").write_text(json.dumps(data))  # writes NaN, as Python does
    with raises("NaN", "transforms.json"):
        load(tmp_path)
    c2w, _ = llff_scene(tmp_path / "llff")
    table = np.load(tmp_path / "llff" / "poses_bounds.npy")
    table[2, 3] = np.inf
    np.save(tmp_path / "llff" / "poses_bounds.npy", table)
    with raises("IMG_0002.JPG", "poses_bounds.npy"):
        load(tmp_path / "llff")


def test_multiple_image_sizes(tmp_path):
    nerfstudio_scene(tmp_path)
    data = json.loads((tmp_path / "transforms.json").read_text())
    data["frames"][0].update(w=16, h=12)
    write_json(tmp_path / "transforms.json", data)
    with raises("8x6.*16x12", "transforms.json"):
        load(tmp_path)
    colmap_scene(
        tmp_path / "c", cameras=[(1, PINHOLE, W, H, [1.0] * 4), (2, PINHOLE, 16, 12, [1.0] * 4)]
    )
    with raises("8x6 and 16x12", "cameras.bin"):
        load(tmp_path / "c")
    blender_scene(tmp_path / "b", counts=(("train", 2), ("test", 1)))
    write_png(tmp_path / "b" / "test" / "r_0.png", 0, "RGBA", size=(16, 12))
    with raises("16x12", "transforms_test.json"):
        load(tmp_path / "b")


def test_malformed_colmap_and_llff_files(tmp_path):
    colmap_scene(tmp_path)
    images = tmp_path / "sparse" / "0" / "images.bin"
    images.write_bytes(images.read_bytes()[:-30])
    with raises("malformed", "images.bin"):
        load(tmp_path)
    (tmp_path / "l").mkdir()
    np.save(tmp_path / "l" / "poses_bounds.npy", np.zeros((3, 15)))
    with raises("N,17", "poses_bounds.npy"):
        load(tmp_path / "l")
    llff_scene(tmp_path / "m")
    (tmp_path / "m" / "images" / "IMG_0000.JPG").unlink()
    with raises("9 poses but 8 images", "poses_bounds.npy"):
        load(tmp_path / "m")


# -- the bundled assets ----------------------------------------------------------------------


def asset(name: str) -> Path:
    path = ASSETS / name
    if not (path / "scene.json").is_file():
        pytest.skip(f"assets/{name} is not there")
    return path


@pytest.mark.parametrize(
    "name, layout", [("object360", "blender"), ("dynamic", "dnerf"), ("forward", "nerfstudio")]
)
def test_bundled_assets_load(name, layout):
    path = asset(name)
    truth = json.loads((path / "scene.json").read_text())
    assert detect_layout(path) == layout and layout in LAYOUTS
    ds = load(path, "train")
    image = ds.image(0)
    assert image.shape == (ds.cameras.height, ds.cameras.width, 3)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    # Every camera sees the true scene box's centre in front of it, inside its image.
    aabb = torch.tensor(truth["aabb"])
    pix, depth = ds.cameras.project(aabb.mean(0))
    assert bool((depth > 0).all())
    assert bool(((pix >= 0) & (pix <= torch.tensor([ds.cameras.width, ds.cameras.height]))).all())
    # The scene box holds the true box's centre and is not much larger than it.
    assert bool(((ds.bounds[0] <= aabb.mean(0)) & (aabb.mean(0) <= ds.bounds[1])).all())
    assert bool(((ds.bounds[0] >= aabb[0] - 1.5) & (ds.bounds[1] <= aabb[1] + 1.5)).all())
    if layout == "dnerf":
        assert ds.times is not None and float(ds.times.min()) >= 0 and float(ds.times.max()) <= 1


def test_bundled_forward_points_match_the_images():
    ds = load(asset("forward"), "all")
    assert ds.points is not None and ds.point_colors is not None
    # The cloud shares the cameras' frame: points project onto pixels of their colour.
    pix, depth = ds.cameras[0].project(ds.points)
    inside = (
        (depth[0, :, 0] > 0)
        & (pix[0] >= 0).all(-1)
        & (pix[0] < torch.tensor([ds.cameras.width, ds.cameras.height])).all(-1)
    )
    px = pix[0][inside].long()
    seen = ds.image(0)[px[:, 1], px[:, 0]]
    assert int(inside.sum()) > 100
    assert float((seen - ds.point_colors[inside]).abs().mean()) < 0.1
