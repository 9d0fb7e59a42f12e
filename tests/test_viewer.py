"""The web viewer: camera and splat conversions to viser, scenes, the server, the live hook.

The conversion tests need only torch; the ones that start a server skip without viser
(``pip install 'snap3d[viewer]'``).
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from snap3d.viewers.conversions import (
    cameras_to_viser,
    scene_up_direction,
    splats_to_viser,
    viser_to_cameras,
)
from snap3d.viewers.scene import ViewerScene, open_scene

from snap3d.cameras import Cameras, intrinsics_matrix, look_at, quat_to_rotmat
from snap3d.errors import Snap3dError
from snap3d.io import SH_C0, SplatData, save_splats

BLOBS = {  # world centre -> colour; asymmetric, so that flips and mirrors show
    "red": ((-0.6, 0.0, 0.0), (1.0, 0.1, 0.1)),
    "green": ((0.0, -0.6, 0.0), (0.1, 0.9, 0.1)),
    "blue": ((0.6, 0.0, 0.0), (0.1, 0.1, 1.0)),
}


def three_blobs(per_blob: int = 300, seed: int = 0) -> SplatData:
    """Opaque red, green and blue balls of small Gaussians left, above and right of the
    origin, as seen by a camera looking along +z with -y up (OpenCV world)."""
    g = torch.Generator().manual_seed(seed)
    means, colors = [], []
    for center, color in BLOBS.values():
        offsets = torch.randn(per_blob, 3, generator=g)
        offsets = offsets / offsets.norm(dim=-1, keepdim=True) * torch.rand(per_blob, 1, generator=g) ** (1 / 3)  # fmt: skip
        means.append(torch.tensor(center) + 0.22 * offsets)
        colors.append(torch.tensor(color).expand(per_blob, 3))
    n = 3 * per_blob
    rgb = torch.cat(colors)
    return SplatData(
        means=torch.cat(means),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=torch.full((n, 3), math.log(0.04)),
        opacities=torch.full((n,), 4.0),
        sh0=((rgb - 0.5) / SH_C0)[:, None, :],
        shN=torch.zeros(n, 0, 3),
    )


def blob_centroid(image: np.ndarray, name: str) -> np.ndarray | None:
    """(x, y) mean pixel of the pixels that are clearly the blob's colour, or None when
    they are too few to be the blob (0.2% of the image)."""
    rgb = image[..., :3].astype(np.float32) / 255
    channel = {"red": 0, "green": 1, "blue": 2}[name]
    others = [c for c in range(3) if c != channel]
    mask = (rgb[..., channel] > 0.5) & (rgb[..., others].max(-1) < 0.45)
    if mask.sum() < max(20, 0.002 * mask.size):
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def viser_pose_looking_at(eye, target, up) -> np.ndarray:
    """viser's wxyz for a camera at ``eye`` looking at ``target``: the rotation whose
    columns are the camera's x (right), y (down) and z (forward) axes, via viser's SO3."""
    from viser import transforms as tf

    c2w = look_at(torch.tensor([eye]), torch.tensor([target]), up).double()[0]
    return tf.SO3.from_matrix(c2w[:3, :3].numpy()).wxyz


def threejs_project(wxyz, position, fov, width, height, points: np.ndarray) -> np.ndarray:
    """Pixel coordinates of world points as the viser client draws them.

    The client's three.js camera is R_world_camera times a rotation of pi about x (three.js
    cameras look down -z with y up) and a perspective of vertical ``fov`` and aspect
    width / height; normalised device coordinates map to the canvas with y flipped.
    """
    w, x, y, z = wxyz
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    R_threecam = R @ np.diag([1.0, -1.0, -1.0])
    p = (points - position) @ R_threecam  # world -> three.js camera frame
    f = 1 / math.tan(fov / 2)
    ndc_x = f / (width / height) * p[:, 0] / -p[:, 2]
    ndc_y = f * p[:, 1] / -p[:, 2]
    return np.stack([(ndc_x + 1) / 2 * width, (1 - ndc_y) / 2 * height], -1)


# -- cameras ----------------------------------------------------------------------------


def test_viser_camera_projects_points_where_the_browser_draws_them():
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        wxyz = torch.nn.functional.normalize(torch.randn(4, generator=g), dim=0).double().numpy()
        position = torch.randn(3, generator=g).double().numpy()
        fov = float(torch.empty(1).uniform_(0.3, 1.8, generator=g))
        width, height = 640, 360
        cams = viser_to_cameras(wxyz, position, fov, width, height)
        # points in front of the camera, in its view
        forward = quat_to_rotmat(torch.tensor(wxyz))[:, 2].numpy()
        offsets = torch.randn(50, 3, generator=g).double().numpy() * 0.3
        points = position + 2.0 * forward + offsets
        pixels, depth = cams.project(torch.tensor(points, dtype=torch.float32))
        expected = threejs_project(wxyz, position, fov, width, height, points)
        assert (depth > 0).all()
        np.testing.assert_allclose(pixels[0].numpy(), expected, atol=2e-3)


def test_viser_camera_renders_the_image_of_the_equivalent_cameras():
    pytest.importorskip("viser", reason="the viewer extra is not installed")
    model = _model(three_blobs())
    eye, target, up = (0.3, -0.5, -3.0), (0.0, -0.2, 0.0), (0.0, -1.0, 0.0)
    width, height, fov = 96, 64, math.radians(45)
    wxyz = viser_pose_looking_at(eye, target, up)
    from_viser = viser_to_cameras(wxyz, np.array(eye), fov, width, height)
    focal = height / 2 / math.tan(fov / 2)
    equivalent = Cameras(
        look_at(torch.tensor([eye]), torch.tensor([target]), up),
        intrinsics_matrix(focal, focal, width / 2, height / 2),
        width,
        height,
    )
    with torch.no_grad():
        a = model.render(from_viser).rgb[0]
        b = model.render(equivalent).rgb[0]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    image = (a.numpy() * 255).astype(np.uint8)
    red, green, blue = (blob_centroid(image, n) for n in ("red", "green", "blue"))
    # world -x on the left, world -y (up) at the top
    assert red[0] < width / 2 < blue[0]
    assert green[1] < min(red[1], blue[1])


def test_cameras_to_viser_round_trip():
    g = torch.Generator().manual_seed(2)
    eyes = torch.randn(4, 3, generator=g) * 3
    c2w = look_at(eyes, torch.zeros(4, 3))
    cams = Cameras(c2w, intrinsics_matrix(300.0, 300.0, 160.0, 120.0, n=4), 320, 240)
    for i in range(4):
        wxyz, position, fov, aspect = cameras_to_viser(cams, i)
        assert aspect == pytest.approx(320 / 240)
        assert fov == pytest.approx(2 * math.atan(120 / 300))
        back = viser_to_cameras(wxyz, position, fov, 320, 240)
        torch.testing.assert_close(back.camtoworlds[0], c2w[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(back.Ks[0], cams.Ks[i], atol=1e-3, rtol=0)


def test_scene_up_direction_of_an_orbit_is_the_orbit_axis():
    angles = torch.linspace(0, 2 * math.pi, 13)[:-1]
    eyes = torch.stack([3 * angles.cos(), 3 * angles.sin(), torch.full_like(angles, 1.0)], -1)
    cams = Cameras(look_at(eyes, torch.zeros(12, 3)), intrinsics_matrix(50, 50, 32, 32, 12), 64, 64)  # fmt: skip
    np.testing.assert_allclose(scene_up_direction(cams), [0, 0, 1], atol=1e-6)


# -- splats -----------------------------------------------------------------------------


def test_splats_to_viser_builds_covariances_colours_and_opacities():
    angle = math.pi / 2  # 90 degrees about z: local x -> world y
    quat = torch.tensor([[math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)]])
    splats = SplatData(
        means=torch.tensor([[1.0, 2.0, 3.0]]),
        quats=2 * quat,  # not normalised
        scales=torch.log(torch.tensor([[1.0, 2.0, 3.0]])),
        opacities=torch.tensor([0.0]),
        sh0=torch.tensor([[[1.0, -10.0, 10.0]]]),
        shN=torch.zeros(1, 3, 3),
    )
    out = splats_to_viser(splats)
    np.testing.assert_allclose(out["centers"], [[1, 2, 3]])
    np.testing.assert_allclose(out["covariances"][0], np.diag([4.0, 1.0, 9.0]), atol=1e-5)
    np.testing.assert_allclose(out["rgbs"][0], [0.5 + SH_C0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out["opacities"], [[0.5]])
    assert {v.dtype for v in out.values()} == {np.dtype(np.float32)}


# -- scenes -----------------------------------------------------------------------------


def test_open_scene_of_a_splat_file(tmp_path):
    path = tmp_path / "blobs.ply"
    save_splats(path, three_blobs())
    scene = open_scene(path)
    assert scene.client_splats and scene.time_range is None
    assert scene.facts["gaussians"] == "900" and scene.facts["file"] == "blobs.ply"
    assert scene.train_cameras is None
    out = scene.exporter("spz")
    assert out.suffix == ".spz" and out.stat().st_size > 0
    assert out.parent != tmp_path  # never writes beside the user's file


def test_open_scene_of_a_run_directory(tmp_path):
    run = _run_dir(tmp_path)
    (run / "metrics.json").write_text(json.dumps({"latest": {"psnr": 31.234, "split": "test", "step": 42}}))  # fmt: skip
    scene = open_scene(run)
    assert scene.facts["method"] == "splat" and scene.facts["step"] == "42"
    assert scene.facts["PSNR"].startswith("31.23 dB")
    assert scene.facts["gaussians"] == "900"
    assert len(scene.train_cameras) == 6 and scene.thumbnail is None
    assert {"ply", "splat", "spz"} <= set(scene.export_formats)
    assert scene.exporter("ply") == run / "exports" / "splat.ply"


def test_open_scene_of_an_iphone_bundle(tmp_path):
    bundle_module = pytest.importorskip("snap3d.mobile.bundle", reason="snap3d.mobile is missing")
    bundle = bundle_module.export_bundle(_run_dir(tmp_path), tmp_path / "blobs.snap3d")
    scene = open_scene(bundle)
    assert scene.client_splats and scene.facts["method"] == "splat"
    assert scene.facts["gaussians"] == "900" and len(scene.train_cameras) == 6
    # the reference renderer draws the bundle for the server and the browser gets its .spz
    image = scene.model.render(_orbit(1)).rgb[0]
    assert blob_centroid((image.numpy() * 255).astype(np.uint8), "red") is not None
    shipped = scene.model.to_splats().means  # in the bundle's (Morton) order
    assert torch.cdist(three_blobs().means, shipped).min(1).values.max() < 1e-2


def test_open_scene_refuses_what_it_cannot_show(tmp_path):
    with pytest.raises(Snap3dError, match="no such file"):
        open_scene(tmp_path / "missing.ply")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(Snap3dError, match="not a scene"):
        open_scene(tmp_path / "notes.txt")
    with pytest.raises(Snap3dError, match="not a scene"):
        open_scene(tmp_path)


# -- the server -------------------------------------------------------------------------


@pytest.fixture
def viser():
    return pytest.importorskip("viser", reason="the viewer extra is not installed")


def test_viewer_serves_the_client_and_nothing_else_on_localhost(viser, tmp_path):
    from snap3d.viewers import SceneViewer

    path = tmp_path / "blobs.ply"
    save_splats(path, three_blobs())
    viewer = SceneViewer(open_scene(path), port=0)
    try:
        assert viewer.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(viewer.url, timeout=10) as response:
            assert b"<html" in response.read(2000).lower()
        for secret in ("/blobs.ply", "/../../etc/passwd", f"/{path}"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(viewer.url + secret, timeout=10)
            assert err.value.code == 404
    finally:
        viewer.stop()


def test_server_rendered_scene_uses_the_chosen_background(viser):
    from snap3d.viewers import SceneViewer

    scene = ViewerScene(_NetworkOnly(_model(three_blobs())), "network", {"method": "test"})
    assert not scene.client_splats
    viewer = SceneViewer(scene, port=0)
    try:
        camera = _orbit(1)
        viewer._background.value = (0, 0, 0)
        image = viewer.render(camera)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert (image[0, 0] == 0).all()  # a corner shows the chosen black, not white
        assert blob_centroid(image, "red") is not None
    finally:
        viewer.stop()


def test_dynamic_scene_renders_at_the_time_of_the_slider(viser):
    from snap3d.viewers import SceneViewer

    from snap3d.representations.base import RenderOutput, SceneMeta

    class Clock:
        """A dynamic scene whose every pixel shows its time as grey."""

        scene = SceneMeta([[-1, -1, -1], [1, 1, 1]], 3.0, [1.0, 1.0, 1.0], time_range=(0.0, 1.0))

        def render(self, cameras):
            shape = (len(cameras), cameras.height, cameras.width, 3)
            return RenderOutput(rgb=cameras.times.view(-1, 1, 1, 1).expand(shape))

        def describe(self):
            return {}

        def to_splats(self):  # canonical Gaussians are not the scene at a time
            raise AssertionError("a dynamic scene is rendered on the server")

    scene = ViewerScene(Clock(), "clock")
    assert scene.time_range == (0.0, 1.0) and not scene.client_splats
    viewer = SceneViewer(scene, port=0)
    try:
        assert viewer.time == 0.0 and (viewer.render(_orbit(1)) == 0).all()
        viewer._time.value = 0.5
        assert viewer.time == 0.5 and (viewer.render(_orbit(1)) == 128).all()
        viewer._play.value = True
        assert _eventually(lambda: viewer.time > 0.5, timeout=5)
        viewer._play.value = False
    finally:
        viewer.stop()


def test_server_renders_small_while_moving_then_sharp(viser):
    from snap3d.viewers import SceneViewer
    from snap3d.viewers.server import _ClientRenderer

    shown = []
    wxyz = viser_pose_looking_at((0.0, -0.3, -3.0), (0.0, 0.0, 0.0), (0.0, -1.0, 0.0))
    camera = SimpleNamespace(
        wxyz=wxyz,
        position=np.array([0.0, -0.3, -3.0]),
        fov=math.radians(50),
        image_width=320,
        image_height=240,
        on_update=lambda callback: None,
    )
    client = SimpleNamespace(
        client_id=7,
        camera=camera,
        scene=SimpleNamespace(set_background_image=lambda image, **kw: shown.append(image.shape)),
    )
    scene = ViewerScene(_NetworkOnly(_model(three_blobs())), "network", {})
    viewer = SceneViewer(scene, port=0)
    renderer = _ClientRenderer(viewer, client)
    try:
        assert _eventually(lambda: (240, 320, 3) in shown)
        assert shown[0][1] < 320  # the first frame, while "moving", is smaller
        count = len(shown)
        time.sleep(0.6)
        assert len(shown) == count  # still: nothing more to draw
        renderer.redraw()
        assert _eventually(lambda: len(shown) == count + 1) and shown[-1] == (240, 320, 3)
    finally:
        renderer.stop()
        viewer.stop()


def test_live_viewer_shows_progress_pauses_and_exports_between_steps(viser, tmp_path):
    from snap3d.viewers.live import live_viewer_callback

    model = _model(three_blobs())
    cams = _orbit(3)
    trainer = SimpleNamespace(
        model=model,
        method="splat",
        run_dir=tmp_path / "run",
        train_data=SimpleNamespace(cameras=cams, image=lambda i: torch.rand(64, 64, 3)),
        device=torch.device("cpu"),
        paused=False,
        step=1,
        max_steps=10,
        history=[],
    )
    cb = live_viewer_callback(port=0)
    try:
        cb(trainer, 1, {"loss": 0.25})
        assert cb.viewer.url.startswith("http://127.0.0.1:")
        assert "0.2500" in cb._progress.content and "1 / 10" in cb._progress.content
        cb._toggle_pause()
        assert trainer.paused and cb._pause.label == "Resume training"
        cb._toggle_pause()
        assert not trainer.paused

        # While a browser watches, training's changes reach it.
        cb.viewer.server.get_clients = lambda: {0: None}
        with torch.no_grad():
            model.splats["means"] += 1.0
        cb(trainer, 1, {"loss": 0.25})
        cb._sending.result(timeout=20)
        np.testing.assert_allclose(cb.viewer.splats_node.centers, model.splats["means"].detach())

        # An export asked for from the GUI waits for the training thread's next step.
        result = {}
        thread = threading.Thread(target=lambda: result.update(path=cb.viewer.scene.exporter("ply")))  # fmt: skip
        thread.start()
        time.sleep(0.2)
        assert "path" not in result
        trainer.step = 2
        cb(trainer, 2, {"loss": 0.2})
        thread.join(timeout=10)
        assert result["path"] == tmp_path / "run" / "exports" / "splat-step000002.ply"
        assert result["path"].is_file()
    finally:
        cb.stop()


# -- helpers ----------------------------------------------------------------------------


class _NetworkOnly:
    """A model the browser cannot draw (as lightslab): it renders, but has no to_splats."""

    def __init__(self, model):
        self.model, self.scene = model, model.scene

    def render(self, cameras):
        return self.model.render(cameras)

    def describe(self):
        return self.model.describe()


def _eventually(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _model(splats: SplatData):
    from snap3d.representations.base import SceneMeta
    from snap3d.representations.splat import SplatConfig, SplatModel

    scene = SceneMeta(bounds=[[-1, -1, -1], [1, 1, 1]], camera_extent=3.0, background=[1, 1, 1])
    model = SplatModel(SplatConfig(sh_degree=0, backend="torch"), scene)
    model.set_splats(splats)
    return model.eval()


def _run_dir(tmp_path) -> Path:
    """A run directory of the three blobs: config, checkpoint at step 42, six cameras."""
    from snap3d.train.checkpoint import save_checkpoint, save_run_config

    model = _model(three_blobs())
    run = tmp_path / "run"
    save_run_config(run, "splat", model.config, {"data": None}, model.scene)
    (run / "cameras.json").write_text(json.dumps(_orbit(6).to_dict()))
    save_checkpoint(run, 42, model)
    return run


def _orbit(n: int) -> Cameras:
    """n cameras 3 units from the origin, in front of the blobs (-z side), -y up."""
    angles = torch.linspace(-0.4, 0.4, n) if n > 1 else torch.zeros(1)
    eyes = torch.stack([3 * angles.sin(), torch.full_like(angles, -0.3), -3 * angles.cos()], -1)
    c2w = look_at(eyes, torch.zeros(n, 3), (0.0, -1.0, 0.0))
    return Cameras(c2w, intrinsics_matrix(60.0, 60.0, 32.0, 32.0, n), 64, 64)
