"""Write the tiny bundled scenes of ``assets/`` from the analytic scenes.

Each scene is rendered exactly by ``snap3d.data.synthetic`` and written in the layout
that real tools write, so that the loaders read them as they read real data:

- ``object360/``: Blender synthetic (NeRF) layout, RGBA with a transparent background.
- ``forward/``: nerfstudio layout (``transforms.json``, ``images/``, ``sparse_pc.ply``).
- ``dynamic/``: D-NeRF layout (Blender plus a per-frame ``time``) and
  ``trajectories_test.npz``, the true 3D trajectories seen by the first test camera.

Every scene also gets a ``scene.json`` with its bounds and a description. The output is
deterministic: the same arguments give the same bytes.

Usage::

    python scripts/make_assets.py                      # all scenes into assets/
    python scripts/make_assets.py --only dynamic --size 16 --out /tmp/assets
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from snap3d.data import synthetic

ASSETS = Path(__file__).resolve().parent.parent / "assets"

# OpenCV camera axes (x right, y down, z forward) to OpenGL/Blender ones (y up, looking down -z).
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])
BLENDER_ROTATION = 0.012566370614359171  # the unused "rotation" field of the NeRF json files
CAMERA_RADIUS = 4.0
# Fields of view (radians across) in which each object fills most of the frame from 4 m
# without touching its border in any view.
OBJECT360_ANGLE_X = 0.6
DYNAMIC_ANGLE_X = 0.5
SUPERSAMPLE = 3


# ----------------------------------------------------------------------------- writers


def write_json(path: Path, data: dict) -> None:
    """Indented JSON with each innermost list of numbers (a matrix row) on one line."""
    text = json.dumps(data, indent=2)
    text = re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + " ".join(m[1].split()) + "]", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def write_png(path: Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> None:
    """Write ``rgb [H,W,3]`` (and ``alpha [H,W]``) in [0, 1] as an 8-bit RGB(A) PNG."""
    channels = [rgb] if alpha is None else [rgb, alpha[..., None]]
    image = np.round(np.clip(np.concatenate(channels, -1), 0.0, 1.0) * 255.0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, optimize=True)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so the bytes repeat."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def write_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY: ``points [N,3]`` float32 x y z, ``colors [N,3]`` uchar."""
    vertex = np.empty(
        len(points),
        dtype=[
            ("x", "<f4"),
            ("y", "<f4"),
            ("z", "<f4"),
            ("red", "u1"),
            ("green", "u1"),
            ("blue", "u1"),
        ],
    )
    for k, axis in enumerate("xyz"):
        vertex[axis] = points[:, k]
    for k, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = colors[:, k]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    path.write_bytes(header.encode("ascii") + vertex.tobytes())


def write_scene_json(out: Path, scene: synthetic.Scene, layout: str, depths: list, **extra) -> None:
    """``scene.json``: what the scene is, its true bounds and the range of depths seen."""
    seen = np.concatenate([d[d > 0] for d in depths])
    write_json(
        out / "scene.json",
        {
            "name": scene.name,
            "description": scene.description,
            "layout": layout,
            "aabb": np.round(scene.bounds(), 6).tolist(),
            "up": list(scene.up),
            "near": round(float(seen.min()), 4),
            "far": round(float(seen.max()), 4),
            "dynamic": scene.is_dynamic,
            "generator": "scripts/make_assets.py",
            **extra,
        },
    )


# ----------------------------------------------------------------------------- cameras


def orbit_camera(azimuth: float, elevation: float) -> np.ndarray:
    """[4,4] OpenCV camera-to-world on the z-up sphere of radius 4, looking at the origin."""
    eye = CAMERA_RADIUS * np.array(
        [
            math.cos(elevation) * math.cos(azimuth),
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
        ]
    )
    return synthetic.look_at(eye, (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))


def hemisphere_cameras(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n,4,4] cameras uniform on the upper hemisphere (elevation about 3 to 72 degrees)."""
    heights = rng.uniform(0.05, 0.95, n)
    azimuths = rng.uniform(0.0, 2.0 * math.pi, n)
    return np.stack([orbit_camera(a, math.asin(h)) for a, h in zip(azimuths, heights, strict=True)])


def ring_cameras(n: int, elevation: float) -> np.ndarray:
    """[n,4,4] cameras evenly spaced on a ring at ``elevation`` radians, as NeRF's test path."""
    return np.stack([orbit_camera(2.0 * math.pi * k / n, elevation) for k in range(n)])


def blender_K(camera_angle_x: float, size: int) -> np.ndarray:
    """[3,3] intrinsics that Blender loaders derive from ``camera_angle_x``."""
    focal = 0.5 * size / math.tan(0.5 * camera_angle_x)
    return np.array([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])


def gl_matrix(camtoworld: np.ndarray) -> list:
    return (camtoworld @ GL_FROM_CV).tolist()


# ----------------------------------------------------------------------------- scenes


def write_blender(
    out: Path,
    scene: synthetic.Scene,
    splits: dict[str, tuple[np.ndarray, np.ndarray | None]],
    camera_angle_x: float,
    size: int,
    name_format: str,
) -> list:
    """Blender (or, with times, D-NeRF) layout; returns the depth maps for ``scene.json``.

    ``splits`` maps a split name to ``(camtoworlds [N,4,4] OpenCV, times [N] or None)``.
    """
    K = blender_K(camera_angle_x, size)
    depths = []
    for split, (camtoworlds, times) in splits.items():
        frames = []
        for k, c2w in enumerate(camtoworlds):
            time = None if times is None else float(times[k])
            rgb, alpha, depth = synthetic.render(scene, c2w, K, size, size, time, SUPERSAMPLE)
            name = name_format.format(k)
            write_png(out / split / f"{name}.png", rgb, alpha)
            depths.append(depth)
            frame = {"file_path": f"./{split}/{name}", "rotation": BLENDER_ROTATION}
            if time is not None:
                frame["time"] = time
            frame["transform_matrix"] = gl_matrix(c2w)
            frames.append(frame)
        write_json(
            out / f"transforms_{split}.json", {"camera_angle_x": camera_angle_x, "frames": frames}
        )
    return depths


def write_object360(out: Path, size: int) -> None:
    rng = np.random.default_rng(360)
    scene = synthetic.object360_scene()
    splits = {
        "train": (hemisphere_cameras(rng, 100), None),
        "val": (hemisphere_cameras(rng, 10), None),
        "test": (ring_cameras(20, math.radians(30)), None),
    }
    depths = write_blender(out, scene, splits, OBJECT360_ANGLE_X, size, "r_{}")
    write_scene_json(out, scene, "blender", depths, background="transparent")


def write_dynamic(out: Path, size: int) -> None:
    rng = np.random.default_rng(4)
    scene = synthetic.dynamic_scene()
    test_cameras = hemisphere_cameras(rng, 20)
    test_times = np.linspace(0.0, 1.0, 20)
    splits = {
        "train": (hemisphere_cameras(rng, 60), np.linspace(0.0, 1.0, 60)),
        "val": (hemisphere_cameras(rng, 10), (np.arange(10) + 0.5) / 10),
        "test": (test_cameras, test_times),
    }
    depths = write_blender(out, scene, splits, DYNAMIC_ANGLE_X, size, "r_{:03d}")

    # Ground-truth trajectories at half resolution, to keep the file small.
    small = size // 2
    K = blender_K(DYNAMIC_ANGLE_X, small)
    tracks = synthetic.surface_trajectories(scene, test_cameras[0], K, small, small, test_times)
    write_npz(
        out / "trajectories_test.npz",
        {
            "xyz": tracks["xyz"],
            "visible": tracks["visible"],
            "times": test_times.astype(np.float32),
            "camtoworlds": test_cameras[0].astype(np.float32),
            "K": K.astype(np.float32),
            "mask0": tracks["mask0"],
        },
    )
    write_scene_json(
        out,
        scene,
        "dnerf",
        depths,
        background="transparent",
        trajectories={
            "file": "trajectories_test.npz",
            "camera": "./test/r_000 (OpenCV camtoworlds) seen at time 0",
            "resolution": [small, small],
            "times": "the test times",
        },
    )


def write_forward(out: Path, size: int) -> None:
    rng = np.random.default_rng(8)
    scene = synthetic.forward_scene()
    width, height = size, size * 3 // 4
    focal = 0.5 * width / math.tan(math.radians(30))  # 60 degrees across
    K = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])

    # A 6 x 6 hand-held-like grid in the z = 0 plane, every camera toeing in slightly.
    cameras = [
        synthetic.look_at((x, y, 0.0), (0.5 * x, 0.5 * y, -4.0), (0.0, 1.0, 0.0))
        for y in np.linspace(0.3, -0.3, 6)
        for x in np.linspace(-0.5, 0.5, 6)
    ]
    frames, depths = [], []
    for k, c2w in enumerate(cameras):
        rgb, _, depth = synthetic.render(scene, c2w, K, width, height, None, SUPERSAMPLE)
        path = f"images/frame_{k + 1:05d}.png"
        write_png(out / path, rgb)
        depths.append(depth)
        frames.append(
            {"file_path": path, "transform_matrix": gl_matrix(c2w), "colmap_im_id": k + 1}
        )

    # A COLMAP-like sparse cloud: surface points seen through random pixels, with noise
    # growing with distance.
    n = 4000
    views = rng.integers(0, len(cameras), n)
    pixels = rng.uniform((0.0, 0.0), (width, height), (n, 2))
    cam_dirs = np.concatenate([pixels, np.ones((n, 1))], 1) @ np.linalg.inv(K).T
    c2ws = np.stack(cameras)[views]
    dirs = np.einsum("nij,nj->ni", c2ws[:, :3, :3], cam_dirs)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    hit = scene.trace(c2ws[:, :3, 3], dirs)
    points = hit.points + rng.normal(0.0, 0.004, (n, 3)) * hit.distance[:, None]
    colors = np.round(hit.rgb * 255.0).astype(np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    write_ply(out / "sparse_pc.ply", points[hit.mask], colors[hit.mask])

    write_json(
        out / "transforms.json",
        {
            "w": width,
            "h": height,
            "fl_x": focal,
            "fl_y": focal,
            "cx": width / 2,
            "cy": height / 2,
            "k1": 0.0,
            "k2": 0.0,
            "p1": 0.0,
            "p2": 0.0,
            "camera_model": "OPENCV",
            "frames": frames,
            "ply_file_path": "sparse_pc.ply",
        },
    )
    write_scene_json(out, scene, "nerfstudio", depths, background="opaque")


SCENES = {"object360": write_object360, "forward": write_forward, "dynamic": write_dynamic}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(SCENES), default=list(SCENES))
    parser.add_argument("--size", type=int, default=128, help="image width in pixels")
    parser.add_argument("--out", type=Path, default=ASSETS, help="folder to write the scenes into")
    args = parser.parse_args(argv)
    for name in args.only:
        shutil.rmtree(args.out / name, ignore_errors=True)  # no stale frames from older runs
        SCENES[name](args.out / name, args.size)
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
