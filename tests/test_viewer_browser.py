"""End to end: ``snap3d view`` on a splat file, drawn by headless Chromium.

WebGL runs on SwiftShader (software), driven by playwright-core with the system's
Chromium. The session fixtures install what is missing (Debian's ``chromium`` with
apt-get when running as root, ``playwright-core`` with npm into tests/browser) and skip,
saying why, when they cannot.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from snap3d.io import save_splats

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
VIEWPORT = (1024, 768)


def _install(command: list[str], what: str, **kwargs) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot install {what}: {e}")
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        pytest.skip(f"cannot install {what}: `{' '.join(command)}` failed: {' | '.join(tail)}")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing and possible."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip(f"{CHROMIUM} is missing and apt-get cannot install it here (not root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _install(["apt-get", "update", "-q"], "chromium", env=env)
        _install(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
            "chromium",
            env=env,
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def playwright() -> Path:
    """tests/browser with playwright-core installed (npm; no browser is downloaded)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to drive Chromium (apt-get install nodejs npm)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
        command = "ci" if (BROWSER_DIR / "package-lock.json").is_file() else "install"
        _install([npm, command, "--no-audit", "--no-fund"], "playwright-core", cwd=BROWSER_DIR, env=env)  # fmt: skip
    return BROWSER_DIR


class Browser:
    """tests/browser/screenshot.mjs: a page on ``url`` that takes screenshots on demand."""

    def __init__(self, url: str, chromium: Path, workdir: Path):
        self.process = subprocess.Popen(
            ["node", "screenshot.mjs", url, str(chromium), *map(str, VIEWPORT)],
            cwd=BROWSER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(
            target=self._pump, args=(self.process.stdout, self.lines.put), daemon=True
        ).start()
        threading.Thread(
            target=self._pump, args=(self.process.stderr, self.errors.append), daemon=True
        ).start()
        self.workdir = workdir
        self.count = 0

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line.strip())

    def expect(self, word: str, timeout: float) -> None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line != word:
            raise AssertionError(f"browser said {line!r}, not {word!r}; stderr: {self.errors[-5:]}")

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        self.count += 1
        path = self.workdir / f"shot-{self.count:02d}.png"
        self.process.stdin.write(f"shot {path}\n")
        self.process.stdin.flush()
        self.expect("done", timeout=90)
        return np.asarray(Image.open(path).convert("RGB"))

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def _wait_for(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def test_viewer_draws_a_splat_file_in_chromium(chromium, playwright, tmp_path):
    pytest.importorskip("viser", reason="the viewer extra is not installed (snap3d[viewer])")
    from scipy import ndimage
    from snap3d.viewers import SceneViewer, open_scene
    from snap3d.viewers.conversions import viser_to_cameras
    from test_viewer import blob_centroid, three_blobs

    path = tmp_path / "blobs.ply"
    save_splats(path, three_blobs())
    viewer = SceneViewer(open_scene(path), port=0)
    browser = Browser(viewer.url, chromium, tmp_path)
    try:
        browser.expect("ready", timeout=60)
        names = ("red", "green", "blue")
        shots = [browser.screenshot()]

        def drawn():
            # viser grows new Gaussians in over a moment: wait for a still frame.
            shots.append(browser.screenshot())
            found = all(blob_centroid(shots[-1], n) is not None for n in names)
            return found and np.array_equal(shots[-1], shots[-2])

        assert _wait_for(drawn, timeout=30), f"no splats drawn; browser: {browser.errors[-5:]}"
        image = shots[-1]

        # The Screenshot button's image: the browser draws it again, offscreen.
        client = next(iter(viewer.server.get_clients().values()))
        shot = viewer.screenshot(client)
        assert shot.shape == (VIEWPORT[1], VIEWPORT[0], 3)
        assert all(blob_centroid(shot, n) is not None for n in names)

        # The same page without the Gaussians: the scene is what differs.
        viewer.splats_node.visible = False

        def cleared():
            shots.append(browser.screenshot())
            return all(blob_centroid(shots[-1], n) is None for n in names)

        assert _wait_for(cleared, timeout=10), "hiding the splats did not clear them"
        empty = shots[-1]
        changed = np.abs(image.astype(int) - empty.astype(int)).max(-1) > 40
        assert changed.mean() > 0.02, f"only {changed.mean():.2%} of the pixels show the scene"

        # For the browser's own camera, snap3d's rasterizer puts every blob where the
        # browser drew it: the camera conversion holds end to end. Pixels under the
        # panels (the boxes around what is not background on the empty page) are left
        # out of both.
        cam = client.camera
        assert (cam.image_width, cam.image_height) == VIEWPORT
        ours = viewer.render(
            viser_to_cameras(cam.wxyz, cam.position, cam.fov, cam.image_width, cam.image_height)
        )
        background = np.array([255, 255, 255], dtype=np.uint8)
        image, ours = image.copy(), ours.copy()
        labels, _ = ndimage.label((empty != background).any(-1))
        for box in ndimage.find_objects(labels):
            image[box] = ours[box] = background
        for name in names:
            theirs, mine = blob_centroid(image, name), blob_centroid(ours, name)
            assert np.abs(mine - theirs).max() < 0.01 * VIEWPORT[0], (name, mine, theirs)
    finally:
        browser.close()
        viewer.stop()
