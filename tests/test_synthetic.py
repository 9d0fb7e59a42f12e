"""The analytic scenes, their ray tracer and the bundled assets made from them."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from snap3d.data import synthetic
from snap3d.data.synthetic import Box, Cylinder, Quad, Solid, Sphere, rigid, rotation

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
WHITE = Solid((1.0, 1.0, 1.0))
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def rays(origins, dirs):
    dirs = np.asarray(dirs, dtype=np.float64)
    return np.asarray(origins, dtype=np.float64), dirs / np.linalg.norm(
        dirs, axis=-1, keepdims=True
    )


def pinhole(focal: float, size: int) -> np.ndarray:
    return np.array([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------- intersections


def test_ray_sphere_matches_analytic_hits():
    sphere = Sphere(radius=1.0, pose=rigid(translation=(0.0, 0.0, 5.0)), texture=WHITE)
    o, d = rays(
        [[0, 0, 0], [0.6, 0, 0], [1.5, 0, 0], [0, 0, 5], [0, 0, 10]],
        [[0, 0, 1], [0, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1]],
    )
    distance, normals, albedo = sphere.intersect(o, d)
    np.testing.assert_allclose(distance[:2], [4.0, 5.0 - 0.8])
    np.testing.assert_allclose(normals[:2], [[0, 0, -1], [0.6, 0, -0.8]], atol=1e-12)
    assert np.isinf(distance[2]) and not albedo[2].any()  # passes beside it
    np.testing.assert_allclose(distance[3], 1.0)  # from the centre: the exit, outward normal
    np.testing.assert_allclose(normals[3], [1, 0, 0], atol=1e-12)
    assert np.isinf(distance[4])  # the sphere is behind the ray
    np.testing.assert_allclose(albedo[:2], 1.0)


def test_ray_box_matches_analytic_hits():
    # Half sizes (1, 2, 3) turned a quarter about z: (2, 1, 3) in the world, centred at x = 10.
    box = Box(
        half_size=(1.0, 2.0, 3.0),
        pose=rigid(rotation((0, 0, 1), math.pi / 2), (10.0, 0.0, 0.0)),
        texture=WHITE,
    )
    o, d = rays(
        [[0, 0, 0], [10, 0, 10], [10, 1.5, 0], [10, 0, 0], [0, 0, 3.5]],
        [[1, 0, 0], [0, 0, -1], [0, 0, 1], [0, 1, 0], [1, 0, 0]],
    )
    distance, normals, _ = box.intersect(o, d)
    np.testing.assert_allclose(distance[:2], [8.0, 7.0])
    np.testing.assert_allclose(normals[:2], [[-1, 0, 0], [0, 0, 1]], atol=1e-12)
    assert np.isinf(distance[2])  # outside the box's y extent
    np.testing.assert_allclose(distance[3], 1.0)  # from inside: the exit, outward normal
    np.testing.assert_allclose(normals[3], [0, 1, 0], atol=1e-12)
    assert np.isinf(distance[4])  # above the box
    np.testing.assert_allclose(box.bounds(), [[8, -1, -3], [12, 1, 3]], atol=1e-12)


def test_ray_cylinder_and_quad_match_analytic_hits():
    cylinder = Cylinder(radius=1.0, half_height=1.0, texture=WHITE)
    o, d = rays(
        [[0, 0, 5], [-5, 0, 0], [-5, 0, 1.5], [0.5, 0, -5]],
        [[0, 0, -1], [1, 0, 0], [1, 0, 0], [0, 0, 1]],
    )
    distance, normals, _ = cylinder.intersect(o, d)
    np.testing.assert_allclose(distance[[0, 1, 3]], [4.0, 4.0, 4.0])
    np.testing.assert_allclose(normals[[0, 1, 3]], [[0, 0, 1], [-1, 0, 0], [0, 0, -1]], atol=1e-12)
    assert np.isinf(distance[2])

    quad = Quad(half_size=(1.0, 2.0), pose=rigid(translation=(0, 0, -3)), texture=WHITE)
    o, d = rays([[0, 0, 0], [0, 0, -6], [0, 2.5, 0]], [[0, 0, -1], [0, 0, 1], [0, 0, -1]])
    distance, normals, _ = quad.intersect(o, d)
    np.testing.assert_allclose(distance[:2], [3.0, 3.0])
    np.testing.assert_allclose(normals[:2], [[0, 0, 1], [0, 0, -1]])  # two-sided: faces the ray
    assert np.isinf(distance[2])


def test_signed_distance_is_zero_on_traced_surfaces():
    scene = synthetic.object360_scene()
    camera = synthetic.look_at((3.0, -2.0, 2.0), (0, 0, 0), (0, 0, 1))
    o, d = synthetic.pixel_rays(camera, pinhole(50.0, 24), 24, 24)
    hit = scene.trace(o, d)
    assert hit.mask.mean() > 0.3
    ids = hit.primitive_ids[hit.mask]
    sdf = np.stack([p.signed_distance(hit.points[hit.mask]) for p in scene.primitives], -1)
    np.testing.assert_allclose(np.take_along_axis(sdf, ids[:, None], 1), 0.0, atol=1e-9)
    np.testing.assert_array_equal(scene.nearest_primitive(hit.points[hit.mask]), ids)
    lo, hi = scene.bounds()
    assert (hit.points[hit.mask] >= lo - 1e-9).all() and (hit.points[hit.mask] <= hi + 1e-9).all()


# ----------------------------------------------------------------------------- rendering


def test_sphere_covers_the_analytic_disc():
    radius, dist, focal, size = 1.0, 5.0, 60.0, 64
    scene = synthetic.Scene(
        [Sphere(radius=radius, pose=rigid(translation=(0, 0, dist)), texture=WHITE)]
    )
    rgb, alpha, depth = synthetic.render(scene, np.eye(4), pinhole(focal, size), size, size)
    disc_radius = focal * radius / math.sqrt(dist**2 - radius**2)  # the silhouette cone's image
    assert alpha.sum() == pytest.approx(math.pi * disc_radius**2, rel=5e-3)
    assert rgb.dtype == alpha.dtype == depth.dtype == np.float32
    assert rgb.shape == (size, size, 3) and alpha.shape == depth.shape == (size, size)


def test_depth_at_the_centre_is_the_analytic_distance():
    size, dist = 17, 4.0  # odd, so the centre pixel's centre lies on the optical axis
    camera = synthetic.look_at((0.0, -dist, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    scene = synthetic.Scene([Sphere(radius=0.5, texture=WHITE)])
    _, alpha, depth = synthetic.render(
        scene, camera, pinhole(20.0, size), size, size, supersample=2
    )
    assert depth[size // 2, size // 2] == pytest.approx(dist - 0.5, rel=1e-6)
    assert alpha[size // 2, size // 2] == 1.0 and alpha[0, 0] == 0.0 and depth[0, 0] == 0.0
    # Off-centre, depth is the z-depth: the hit point's coordinate along the viewing axis.
    i, j = size // 2 + 2, size // 2 + 1
    o, d = synthetic.pixel_rays(camera, pinhole(20.0, size), size, size)
    point = scene.trace(o[i, j, 0], d[i, j, 0]).points
    assert depth[i, j] == pytest.approx(point[1] + dist, rel=1e-6)


# ----------------------------------------------------------------------------- motion


def rot_z(angle: float) -> np.ndarray:
    return rotation((0, 0, 1), angle)


def test_dynamic_motion_is_identity_at_zero_and_analytic_at_t():
    scene = synthetic.dynamic_scene()
    camera = synthetic.look_at((2.0, -3.0, 2.0), (0, 0, 0), (0, 0, 1))
    o, d = synthetic.pixel_rays(camera, pinhole(30.0, 24), 24, 24)
    hit = scene.trace(o[:, :, 0], d[:, :, 0], 0.0)
    points = hit.points[hit.mask]
    np.testing.assert_allclose(synthetic.dynamic_motion(points, 0.0), points, atol=1e-12)

    # Points carried to time t lie on the surface of their primitive at time t.
    ids = hit.primitive_ids[hit.mask]
    moved = synthetic.dynamic_motion(points, 0.7, ids)
    for k, primitive in enumerate(scene.primitives):
        np.testing.assert_allclose(primitive.signed_distance(moved[ids == k], 0.7), 0.0, atol=1e-9)

    centre, r, hinge = (
        np.array(synthetic.ORBIT_CENTRE),
        synthetic.BALL_RADIUS,
        np.array(synthetic.HINGE),
    )
    equator = centre + [r, 0.0, 0.0]  # on the ball: spins 2 pi t about its centre, orbits pi t
    arm_tip = hinge + [0.7, 0.0, 0.14]  # top edge of the arm's free end: swings up 60 t degrees
    for t in (0.25, 0.5, 1.0):
        expected_equator = rot_z(math.pi * t) @ centre + r * np.array(
            [math.cos(3 * math.pi * t), math.sin(3 * math.pi * t), 0.0]
        )
        a = math.radians(60) * t
        rel = arm_tip - hinge
        expected_tip = hinge + [
            rel[0] * math.cos(a) - rel[2] * math.sin(a),
            rel[1],
            rel[0] * math.sin(a) + rel[2] * math.cos(a),
        ]
        got = synthetic.dynamic_motion(np.stack([equator, arm_tip]), t)
        np.testing.assert_allclose(got, [expected_equator, expected_tip], atol=1e-12)


# ----------------------------------------------------------------------------- the assets


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def check_blender_frames(folder: Path, split: str, count: int, times: bool) -> list[dict]:
    meta = load_json(folder / f"transforms_{split}.json")
    assert isinstance(meta["camera_angle_x"], float)
    frames = meta["frames"]
    assert len(frames) == count
    for frame in frames:
        assert frame["file_path"].startswith(f"./{split}/") and "." not in frame["file_path"][2:]
        c2w = np.array(frame["transform_matrix"])
        assert c2w.shape == (4, 4)
        np.testing.assert_allclose(c2w[3], [0, 0, 0, 1])
        np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
        # OpenGL: the camera looks down its -z axis, at the object at the origin.
        eye = c2w[:3, 3]
        assert -c2w[:3, 2] @ (-eye / np.linalg.norm(eye)) == pytest.approx(1.0)
        assert ("time" in frame) == times
        if times:
            assert 0.0 <= frame["time"] <= 1.0
    image = Image.open(folder / (frames[0]["file_path"] + ".png"))
    assert image.mode == "RGBA" and image.size == (128, 128)
    assert len(list((folder / split).glob("*.png"))) == count
    return frames


def check_scene_json(folder: Path) -> dict:
    meta = load_json(folder / "scene.json")
    assert {"name", "description", "aabb", "near", "far", "up"} <= meta.keys()
    lo, hi = np.array(meta["aabb"])
    assert (lo < hi).all() and 0 < meta["near"] < meta["far"]
    return meta


def test_object360_asset_is_blender_layout():
    folder = ASSETS / "object360"
    for split, count in (("train", 100), ("val", 10), ("test", 20)):
        check_blender_frames(folder, split, count, times=False)
    assert check_scene_json(folder)["dynamic"] is False


def test_dynamic_asset_is_dnerf_layout_with_trajectories():
    folder = ASSETS / "dynamic"
    for split, count in (("train", 60), ("val", 10), ("test", 20)):
        frames = check_blender_frames(folder, split, count, times=True)
    assert check_scene_json(folder)["dynamic"] is True
    tracks = np.load(folder / "trajectories_test.npz")
    t, h, w = tracks["visible"].shape
    assert tracks["xyz"].shape == (t, h, w, 3) and tracks["xyz"].dtype == np.float32
    assert tracks["times"].shape == (t,) and tracks["mask0"].shape == (h, w)
    assert tracks["camtoworlds"].shape == (4, 4) and tracks["K"].shape == (3, 3)
    np.testing.assert_allclose(tracks["times"], [f["time"] for f in frames], atol=1e-7)
    # The file's OpenCV camera is the first test frame's OpenGL one, axes flipped.
    np.testing.assert_allclose(
        tracks["camtoworlds"] @ GL_FROM_CV, frames[0]["transform_matrix"], atol=1e-6
    )
    np.testing.assert_array_equal(tracks["visible"][0], tracks["mask0"])
    assert 0.2 < tracks["mask0"].mean() < 0.8


def test_dynamic_test_image_matches_a_render_from_its_json_camera():
    folder = ASSETS / "dynamic"
    meta = load_json(folder / "transforms_test.json")
    frame = meta["frames"][3]
    c2w = np.array(frame["transform_matrix"]) @ GL_FROM_CV
    focal = 0.5 * 128 / math.tan(0.5 * meta["camera_angle_x"])
    rgb, alpha, _ = synthetic.render(
        synthetic.dynamic_scene(), c2w, pinhole(focal, 128), 128, 128, frame["time"]
    )
    stored = (
        np.asarray(Image.open(folder / (frame["file_path"] + ".png")), dtype=np.float32) / 255.0
    )
    np.testing.assert_allclose(stored[..., 3], alpha, atol=1 / 255)
    np.testing.assert_allclose(stored[..., :3], rgb, atol=1 / 255)


def test_forward_asset_is_nerfstudio_layout():
    folder = ASSETS / "forward"
    meta = load_json(folder / "transforms.json")
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2"):
        assert isinstance(meta[key], (int, float)), key
    assert meta["camera_model"] == "OPENCV" and "applied_transform" not in meta
    assert 30 <= len(meta["frames"]) <= 40
    for frame in meta["frames"]:
        assert frame["file_path"].startswith("images/frame_") and frame["file_path"].endswith(
            ".png"
        )
        c2w = np.array(frame["transform_matrix"])
        assert c2w[2, 2] > 0.95  # every camera looks roughly down the world's -z
    image = Image.open(folder / meta["frames"][0]["file_path"])
    assert image.mode == "RGB" and image.size == (meta["w"], meta["h"])

    ply = (folder / meta["ply_file_path"]).read_bytes()
    header, body = ply.split(b"end_header\n", 1)
    lines = header.decode("ascii").splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    count = int(lines[2].split()[-1])
    assert 2000 <= count <= 5000 and len(body) == count * 15
    assert [line.split()[-1] for line in lines[3:]] == ["x", "y", "z", "red", "green", "blue"]
    check_scene_json(folder)


def test_make_assets_is_deterministic(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_assets", ROOT / "scripts" / "make_assets.py"
    )
    make_assets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_assets)
    outputs = []
    for name in ("a", "b"):
        root = tmp_path / name
        make_assets.main(["--only", "dynamic", "forward", "--size", "16", "--out", str(root)])
        outputs.append(
            {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        )
    assert outputs[0].keys() == outputs[1].keys()
    assert Path("dynamic/trajectories_test.npz") in outputs[0]
    assert Path("forward/sparse_pc.ply") in outputs[0]
    for path, data in outputs[0].items():
        assert data == outputs[1][path], path
