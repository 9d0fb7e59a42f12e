"""The viser web viewer: ``SceneViewer`` serves one ``ViewerScene`` to browsers.

Static splat-based scenes are sent to the browser as Gaussian splats and viser draws
them there. Every other scene is rendered here, for each browser's camera, by a
``_ClientRenderer``: small while the camera moves (sized so a frame takes about
``MOVING_SECONDS``), then at the chosen resolution once it has been still for
``STILL_SECONDS``.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import math
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from snap3d.cameras import Cameras
from snap3d.errors import Snap3dError
from snap3d.io import SplatData

from .conversions import (
    cameras_to_viser,
    scene_up_direction,
    splats_to_viser,
    viser_to_cameras,
)
from .scene import ViewerScene, open_scene, to_uint8

MOVING_SECONDS = 0.1
"""Time budget of one server render while the camera moves."""
STILL_SECONDS = 0.25
"""How long the camera must rest before the sharp render."""
DEFAULT_RESOLUTION = 1024
"""Default long side in pixels of sharp server renders and screenshots."""
FAR_DEPTH = 160.0
"""Depth sent for empty pixels of server renders (viser's depth images end at 167.77)."""
MAX_FRUSTUMS = 200
SPLATS_NODE = "/scene/splats"
CAMERAS_NODE = "/training_cameras"


def _is_wildcard(host: str) -> bool:
    """Whether ``host`` is an address that means every interface (unspecified)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a name, such as localhost
        return False


def import_viser():
    try:
        import viser
    except ImportError:
        raise Snap3dError("the web viewer needs viser: pip install 'snap3d[viewer]'") from None
    return viser


class SceneViewer:
    """Serves ``scene`` on ``http://host:port`` from viser's own thread until ``stop()``.

    Args:
        scene: what to show.
        host: interface to bind; the default serves this machine only.
        port: port to bind; viser takes the next free one when it is busy (see ``port``).
        resolution: initial long side in pixels of server renders and screenshots.
    """

    def __init__(
        self,
        scene: ViewerScene,
        host: str = "127.0.0.1",
        port: int = 8080,
        resolution: int = DEFAULT_RESOLUTION,
    ):
        viser = import_viser()
        self.scene = scene
        self.host = host
        # viser prints its own banner; the command prints the one URL that matters.
        with contextlib.redirect_stdout(io.StringIO()):
            self.server = viser.ViserServer(
                host=host, port=port, label=f"snap3d · {scene.name}", verbose=False
            )
        # No share button: a share link tunnels the scene through viser's servers.
        self.server.gui.configure_theme(show_share_button=False, show_logo=False)
        time_range = scene.time_range
        self.time: float | None = None if time_range is None else float(time_range[0])
        self._render_lock = threading.Lock()
        self.render_seconds = 0.0
        """Time spent rendering on this machine so far (the live viewer budgets by it)."""
        self._renderers: dict[int, _ClientRenderer] = {}
        self._stopped = threading.Event()
        self.splats_node = None
        """viser's handle of the Gaussians the browser draws (static splat scenes)."""
        self._set_initial_camera()
        self._build_gui(resolution)
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        if scene.client_splats:
            self.refresh()
        threading.Thread(target=self._add_frustums, name="snap3d-frustums", daemon=True).start()

    # -- serving ----------------------------------------------------------------------

    @property
    def _frustum_scale(self) -> float:
        return 0.025 * float(self.scene.model.scene.camera_extent)

    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        # a wildcard bind (asked for with --host) is browsed through this machine's name
        return f"http://{'localhost' if _is_wildcard(self.host) else self.host}:{self.port}"

    def stop(self) -> None:
        self._stopped.set()
        for renderer in list(self._renderers.values()):
            renderer.stop()
        with contextlib.redirect_stdout(io.StringIO()):
            self.server.stop()

    def refresh(self, splats: SplatData | None = None) -> None:
        """Show the model's current state (the live viewer calls this as training goes).

        Args:
            splats: the Gaussians to send for client-drawn scenes; default the model's.
        """
        if self.scene.client_splats:
            splats = self.scene.model.to_splats() if splats is None else splats
            if splats.num > 0 and self.splats_node is not None:
                # One buffer update in place: no fade-in again, no half-updated frames.
                self.splats_node.set_gaussians(**splats_to_viser(splats))
            elif splats.num > 0:
                self.splats_node = self.server.scene.add_gaussian_splats(
                    SPLATS_NODE, **splats_to_viser(splats)
                )
        self._redraw()

    def set_facts(self, facts: dict[str, str]) -> None:
        self.scene.facts.update(facts)
        self._facts.content = _facts_markdown(self.scene.facts)

    # -- rendering on the server ------------------------------------------------------

    def _redraw(self) -> None:
        for renderer in list(self._renderers.values()):
            renderer.redraw()

    def camera_for(self, client, scale: float = 1.0, clamp_to_canvas: bool = True) -> Cameras:
        """The snap3d camera of a browser's view, its long side ``scale`` times the chosen
        render resolution (never more than the canvas when ``clamp_to_canvas``)."""
        cam = client.camera
        width, height = cam.image_width, cam.image_height
        long_side = float(self._resolution.value)
        if clamp_to_canvas:
            long_side = min(long_side, max(width, height))
        factor = long_side * scale / max(width, height)
        return viser_to_cameras(
            cam.wxyz,
            cam.position,
            cam.fov,
            max(1, round(width * factor)),
            max(1, round(height * factor)),
            time=self.time,
        )

    def render(self, camera: Cameras) -> np.ndarray:
        """[H,W,3] uint8: the scene seen by ``camera`` over the chosen background colour."""
        return self.render_with_depth(camera)[0]

    @torch.no_grad()
    def render_with_depth(self, camera: Cameras) -> tuple[np.ndarray, np.ndarray | None]:
        """The image of ``render`` and, when the model gives one, [H,W] float32 depth along
        the camera's z (far where nothing is drawn), for viser to hide what lies behind."""
        scene = self.scene
        if self.time is not None:
            camera = replace(camera, times=torch.tensor([self.time]))
        with self._render_lock:
            start = time.perf_counter()
            out = scene.model.render(camera.to(scene.device))
            self.render_seconds += time.perf_counter() - start
        rgb = out.rgb[0, ..., :3].float()
        background = torch.tensor(self._background.value, device=rgb.device) / 255
        depth = None
        if out.alpha is not None:
            # The model composites over its training background; swap in the chosen one.
            alpha = out.alpha[0].float()
            trained = torch.tensor(scene.background, device=rgb.device)
            rgb = rgb + (1 - alpha) * (background - trained)
            if out.depth is not None:
                far = torch.full_like(alpha, FAR_DEPTH)
                depth = torch.where(alpha > 0.5, out.depth[0].float(), far)[..., 0].cpu().numpy()
        return to_uint8(rgb), depth

    # -- scene set-up -----------------------------------------------------------------

    def _set_initial_camera(self) -> None:
        meta = self.scene.model.scene
        bounds = np.asarray(meta.bounds, dtype=np.float64)
        center = bounds.mean(0)
        cameras = self.scene.train_cameras
        if cameras is not None:
            # Start at the first training view (trained scenes look their best from
            # where they were trained), just in front of its own frustum.
            up = scene_up_direction(cameras)
            _, eye, fov, aspect = cameras_to_viser(cameras, 0)
            forward = cameras.forward[0].double().numpy()
            distance = max(float(np.linalg.norm(center - eye)), 1e-3)
            past_frustum = 1.5 * _frustum_depth(fov, aspect, self._frustum_scale)
            position = eye + forward * min(past_frustum, 0.5 * distance)
            look_at = eye + forward * distance
        else:
            # A splat file has no cameras: look at the middle from outside, OpenCV up (-y).
            up = np.array([0.0, -1.0, 0.0])
            radius = max(float(np.linalg.norm(bounds[1] - bounds[0])) / 2, 1e-3)
            position = center + radius * np.array([0.0, -0.8, -2.4])
            look_at, fov = center, math.radians(50)
        self.server.scene.set_up_direction(tuple(up))
        initial = self.server.initial_camera
        initial.position = tuple(position)
        initial.look_at = tuple(look_at)
        initial.up = tuple(up)
        initial.fov = fov

    def _build_gui(self, resolution: int) -> None:
        gui = self.server.gui
        scene = self.scene
        self._facts = gui.add_markdown(_facts_markdown(scene.facts))
        with gui.add_folder("View"):
            self._background = gui.add_rgb(
                "Background", tuple(round(255 * c) for c in scene.background)
            )
            self._resolution = gui.add_slider(
                "Resolution",
                min=64,
                max=4096,
                step=16,
                initial_value=resolution,
                hint="Long side in pixels of server renders and screenshots",
            )
            self._show_cameras = gui.add_checkbox("Training cameras", True)
            if self.time is not None:
                t0, t1 = (float(t) for t in scene.time_range)
                self._time = gui.add_slider(
                    "Time", min=t0, max=t1, step=max((t1 - t0) / 200, 1e-4), initial_value=t0
                )
                self._play = gui.add_checkbox("Play", False)
                self._time.on_update(lambda _: self._set_time(self._time.value))
                self._play.on_update(lambda _: self._start_playing())
        self._background.on_update(lambda _: self._apply_background())
        self._resolution.on_update(lambda _: self._redraw())
        self._show_cameras.on_update(lambda _: self._toggle_cameras())
        screenshot = gui.add_button("Screenshot", hint="Download a PNG of this view")
        screenshot.on_click(lambda event: self._guarded(event, self._screenshot))
        if scene.exporter is not None and scene.export_formats:
            with gui.add_folder("Export"):
                for fmt in scene.export_formats:
                    label = "iPhone bundle" if fmt == "ios" else f".{fmt}"
                    button = gui.add_button(label, hint=f"Write and download the scene as {label}")
                    button.on_click(lambda event, fmt=fmt: self._guarded(event, self._export, fmt))
        self._apply_background()

    def _apply_background(self) -> None:
        if self.scene.client_splats:
            color = np.array(self._background.value, dtype=np.uint8)
            self.server.scene.set_background_image(np.tile(color, (1, 1, 1)), format="png")
        else:
            self._redraw()

    def _add_frustums(self) -> None:
        cameras = self.scene.train_cameras
        if cameras is None:
            return
        self._frustum_root = self.server.scene.add_frame(CAMERAS_NODE, show_axes=False)
        scale = self._frustum_scale
        thumbnail = self.scene.thumbnail
        for i in np.linspace(0, len(cameras) - 1, min(len(cameras), MAX_FRUSTUMS)).round():
            if self._stopped.is_set():
                return
            i = int(i)
            image = None
            if thumbnail is not None:
                try:
                    image = thumbnail(i)
                except (Snap3dError, OSError) as e:
                    print(f"snap3d view: training images not shown: {e}")
                    thumbnail = None
            wxyz, position, fov, aspect = cameras_to_viser(cameras, i)
            frustum = self.server.scene.add_camera_frustum(
                f"{CAMERAS_NODE}/{i:05d}",
                fov=fov,
                aspect=aspect,
                scale=scale,
                thickness=0.05 * scale,
                color=(60, 120, 220),
                image=image,
                format="jpeg",
                wxyz=wxyz,
                position=position,
            )
            frustum.on_click(lambda event, i=i: self._fly_to(event.client, i))

    def _toggle_cameras(self) -> None:
        root = getattr(self, "_frustum_root", None)
        if root is not None:
            root.visible = self._show_cameras.value

    def _fly_to(self, client, i: int) -> None:
        wxyz, position, fov, _ = cameras_to_viser(self.scene.train_cameras, i)
        with client.atomic():
            client.camera.fov = fov
            client.camera.wxyz = wxyz
            client.camera.position = position

    # -- time -------------------------------------------------------------------------

    def _set_time(self, value: float) -> None:
        self.time = float(value)
        for renderer in list(self._renderers.values()):
            renderer.moved()

    def _start_playing(self) -> None:
        player = getattr(self, "_player", None)
        if self._play.value and (player is None or not player.is_alive()):
            self._player = threading.Thread(target=self._play_loop, name="snap3d-play", daemon=True)
            self._player.start()

    def _play_loop(self) -> None:
        t0, t1 = (float(t) for t in self.scene.time_range)
        period = 4.0  # seconds for one sweep of the time range
        while not self._stopped.wait(1 / 15) and self._play.value:
            t = self._time.value + (t1 - t0) / (15 * period)
            self._time.value = t0 if t > t1 else t

    # -- clients ----------------------------------------------------------------------

    # Both run on viser's event loop (async): they only start or stop a thread, and
    # viser's own thread pool may already be gone when clients drop at exit.

    async def _on_connect(self, client) -> None:
        if not self.scene.client_splats:
            self._renderers[client.client_id] = _ClientRenderer(self, client)

    async def _on_disconnect(self, client) -> None:
        renderer = self._renderers.pop(client.client_id, None)
        if renderer is not None:
            renderer.stop()

    def _guarded(self, event, action, *args) -> None:
        """Run a button's action, reporting failures to the browser that clicked."""
        client = event.client
        if client is None:
            return
        try:
            action(client, *args)
        except Exception as e:  # a failed button should tell the user, not kill the thread
            client.add_notification("snap3d", str(e), color="red", auto_close_seconds=8.0)
            print(f"snap3d view: {e}")

    def screenshot(self, client) -> np.ndarray:
        """[H,W,3] uint8: a browser's view at the chosen resolution, drawn where the scene
        is drawn (by the browser for client splats, capped at its canvas; here otherwise)."""
        if not self.scene.client_splats:
            return self.render(self.camera_for(client, clamp_to_canvas=False))
        camera = self.camera_for(client)
        rgba = client.get_render(
            height=camera.height, width=camera.width, transport_format="png", timeout=60
        )
        alpha = rgba[..., 3:].astype(np.float32) / 255
        color = np.array(self._background.value, dtype=np.float32)
        return (rgba[..., :3] * alpha + color * (1 - alpha) + 0.5).astype(np.uint8)

    def _screenshot(self, client) -> None:
        from PIL import Image

        image = self.screenshot(client)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        client.send_file_download(
            f"{self.scene.name}-screenshot.png", buffer.getvalue(), save_immediately=True
        )

    def _export(self, client, fmt: str) -> None:
        note = client.add_notification(
            f"Exporting {fmt}", "writing the file…", loading=True, with_close_button=False
        )
        try:
            path = Path(self.scene.exporter(fmt))
        finally:
            note.remove()
        if path.is_dir():
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
                for p in sorted(path.rglob("*")):
                    zf.write(p, Path(path.name) / p.relative_to(path))
            name, data = f"{path.name}.zip", buffer.getvalue()
        else:
            name, data = path.name, path.read_bytes()
        client.send_file_download(name, data, save_immediately=True)
        client.add_notification(f"Exported {name}", str(path), auto_close_seconds=6.0)
        print(f"snap3d view: exported {path}")


class _ClientRenderer:
    """Draws one browser's view on the server, as its background image.

    Every camera move bumps ``_version``; the thread draws small frames while moves keep
    coming and one sharp frame once they stop, and sleeps when the sharp frame is current.
    """

    def __init__(self, viewer: SceneViewer, client):
        self.viewer = viewer
        self.client = client
        self._wake = threading.Event()
        self._running = True
        self._version = 0
        self._sharp_version = -1
        self._moved_at = 0.0
        self._seconds_per_pixel: float | None = None
        client.camera.on_update(lambda _: self.moved())
        self.moved()
        self._thread = threading.Thread(
            target=self._loop, name=f"snap3d-render-{client.client_id}", daemon=True
        )
        self._thread.start()

    def moved(self) -> None:
        """The camera (or the time) changed: draw quickly now, sharply later."""
        self._moved_at = time.monotonic()
        self.redraw()

    def redraw(self) -> None:
        """The scene changed: draw the current view again, sharply."""
        self._version += 1
        self._wake.set()

    def stop(self) -> None:
        self._running = False
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(timeout=STILL_SECONDS)
            self._wake.clear()
            if not self._running:
                return
            version = self._version
            if version == self._sharp_version:
                continue
            moving = time.monotonic() - self._moved_at < STILL_SECONDS
            try:
                self._draw(self._moving_scale() if moving else 1.0)
            except Exception as e:  # a disconnecting client or a failing model
                if self._running:
                    print(f"snap3d view: render failed: {e}")
                    self._sharp_version = version
                continue
            if not moving:
                self._sharp_version = version

    def _moving_scale(self) -> float:
        """Resolution factor that keeps a frame near MOVING_SECONDS, from the last ones."""
        if self._seconds_per_pixel is None:
            return 0.25
        full = self.viewer.camera_for(self.client)
        pixels = MOVING_SECONDS / self._seconds_per_pixel
        return min(1.0, max(1 / 16, math.sqrt(pixels / (full.width * full.height))))

    def _draw(self, scale: float) -> None:
        camera = self.viewer.camera_for(self.client, scale)
        start = time.perf_counter()
        image, depth = self.viewer.render_with_depth(camera)
        spp = (time.perf_counter() - start) / (camera.width * camera.height)
        old = self._seconds_per_pixel
        self._seconds_per_pixel = spp if old is None else 0.5 * old + 0.5 * spp
        self.client.scene.set_background_image(
            image, format="jpeg", jpeg_quality=90 if scale == 1.0 else 75, depth=depth
        )


def view_command(args) -> None:
    """``snap3d view PATH [--host H] [--port P]``: serve the scene until Ctrl-C."""
    from snap3d.train import resolve_device

    import_viser()
    scene = open_scene(args.path, resolve_device("auto"))
    viewer = SceneViewer(scene, host=args.host, port=args.port)
    if viewer.port != args.port:
        print(f"port {args.port} is busy; using {viewer.port}")
    mode = "drawn in the browser" if scene.client_splats else "rendered on this machine"
    print(f"viewing {args.path} ({scene.facts.get('method', 'splats')}, {mode})")
    print(f"open {viewer.url}  (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print()
    finally:
        viewer.stop()


def _frustum_depth(fov: float, aspect: float, scale: float) -> float:
    """How far in front of a camera viser draws its frustum's image plane: viser sizes
    frustums to a volume of ``scale**3``."""
    y = math.tan(fov / 2)
    return scale / math.cbrt(y * y * aspect / 3)


def _facts_markdown(facts: dict[str, str]) -> str:
    return "\n".join(f"- {key}: **{value}**" for key, value in facts.items())
