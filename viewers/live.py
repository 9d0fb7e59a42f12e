"""The live viewer: ``snap3d train ... --viewer`` serves the model while it trains.

``live_viewer_callback`` returns a trainer callback. It starts the viewer at the first
step. While a browser watches, it copies the Gaussians in the training thread now and
then and sends them from a thread of its own (network scenes are rendered again
instead), no sooner than ``refresh_seconds`` after the last update nor than keeping the
viewer's copying, sending and rendering under ``REFRESH_SHARE`` of the wall time allows,
so that training keeps most of the machine. The panel's step and loss follow at most
``FACTS_HZ`` times a second. Work that reads the model (export) runs in the training
thread between steps, or at once while training is paused.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from snap3d.io import SplatData, save_splats
from snap3d.io.export import SPLAT_FORMATS

from .scene import ViewerScene, describe_facts, psnr_fact, thumbnail_of
from .server import SceneViewer, import_viser

FACTS_HZ = 5.0
REFRESH_SHARE = 0.05
"""Most of the time the live viewer may spend sending the model, as a share of wall time."""
LIVE_RESOLUTION = 512
"""Default sharp resolution of server-rendered scenes while training shares the machine."""


def live_viewer_callback(
    port: int = 8080, host: str = "127.0.0.1", refresh_seconds: float = 2.0
) -> LiveViewer:
    """A ``cb(trainer, step, losses)`` for ``Trainer(callbacks=...)`` that serves the viewer."""
    import_viser()  # fail before training starts, not at its first step
    return LiveViewer(host=host, port=port, refresh_seconds=refresh_seconds)


class LiveViewer:
    """Serves a ``Trainer``'s model with pause/resume, step and loss; see the module doc."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, refresh_seconds: float = 2.0):
        self.host = host
        self.port = port
        self.refresh_seconds = refresh_seconds
        self.viewer: SceneViewer | None = None
        self.trainer = None
        self._tasks: queue.Queue[tuple[Callable, Future]] = queue.Queue()
        self._idle = threading.Event()  # set while the paused loop sleeps between steps
        self._next_refresh = 0.0
        self._facts_at = 0.0
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snap3d-live")
        self._sending: Future | None = None
        self._render_seconds_seen = 0.0

    def __call__(self, trainer, step: int, losses: dict[str, float]) -> None:
        if self.viewer is None:
            self._start(trainer)
        self._run_tasks()
        now = time.monotonic()
        last = step >= trainer.max_steps
        if (now >= self._next_refresh or last) and self.viewer.server.get_clients():
            self._refresh(trainer.model)
        if now - self._facts_at >= 1 / FACTS_HZ or last:
            self._facts_at = now
            self._show_progress(trainer, step, losses)
        if trainer.paused:
            self._idle.set()
            self._run_tasks()

    def stop(self) -> None:
        self._sender.shutdown(wait=True)
        if self.viewer is not None:
            self.viewer.stop()

    def _refresh(self, model) -> None:
        if self._sending is not None and not self._sending.done():
            return
        start = time.monotonic()
        self.viewer.set_facts(describe_facts(model))
        splats = None
        if self.viewer.scene.client_splats:
            with torch.no_grad():
                current = model.to_splats()  # may be views of the parameters being optimized
                splats = SplatData(**{k: v.clone() for k, v in current.to_dict().items()})
        # Server renders of the last refresh (and of the browsers' moves) count too.
        rendered = self.viewer.render_seconds - self._render_seconds_seen
        self._render_seconds_seen += rendered
        self._next_refresh = start + max(self.refresh_seconds, rendered / REFRESH_SHARE)
        self._sending = self._sender.submit(self._send, splats, time.monotonic() - start)

    def _send(self, splats: SplatData | None, copy_seconds: float) -> None:
        start = time.monotonic()
        try:
            self.viewer.refresh(splats)
        except Exception as e:  # keep training; say why the view stopped following
            print(f"live viewer: update failed: {e}")
        took = copy_seconds + time.monotonic() - start
        self._next_refresh = max(self._next_refresh, start + took / REFRESH_SHARE)

    # -- set-up -----------------------------------------------------------------------

    def _start(self, trainer) -> None:
        self.trainer = trainer
        model = trainer.model
        data = trainer.train_data
        formats = SPLAT_FORMATS if hasattr(model, "to_splats") else ()
        scene = ViewerScene(
            model,
            Path(trainer.run_dir).name,
            {"method": trainer.method, **describe_facts(model)},
            train_cameras=data.cameras,
            thumbnail=lambda i: thumbnail_of(data.image(i)),
            export_formats=formats,
            exporter=lambda fmt: self._in_training_thread(lambda: self._export(fmt)),
            device=trainer.device,
        )
        self.viewer = SceneViewer(scene, self.host, self.port, resolution=LIVE_RESOLUTION)
        gui = self.viewer.server.gui
        with gui.add_folder("Training", order=-1.0):  # above the scene's panel
            self._progress = gui.add_markdown("starting…")
            self._pause = gui.add_button("Pause training")
        self._pause.on_click(lambda _: self._toggle_pause())
        print(f"live viewer: {self.viewer.url}", flush=True)

    def _toggle_pause(self) -> None:
        trainer = self.trainer
        if trainer.paused:
            self._idle.clear()
            trainer.paused = False
        else:
            trainer.paused = True
        self._pause.label = "Resume training" if trainer.paused else "Pause training"
        self._show_progress(trainer, trainer.step, None)

    def _show_progress(self, trainer, step: int, losses: dict[str, float] | None) -> None:
        if losses is not None:
            self._losses = losses
        lines = [f"- step: **{step:,} / {trainer.max_steps:,}**"]
        lines += [f"- {k}: **{v:.4f}**" for k, v in getattr(self, "_losses", {}).items()]
        if trainer.history:
            lines.append(f"- PSNR: **{psnr_fact(trainer.history[-1])}**")
        if trainer.paused:
            lines.append("- *paused*")
        elif step >= trainer.max_steps:
            lines.append("- *done: evaluating, then the viewer closes*")
        self._progress.content = "\n".join(lines)

    # -- work that reads the model ----------------------------------------------------

    def _in_training_thread(self, fn):
        """Run ``fn`` between training steps (at once while paused) and return its result."""
        future: Future = Future()
        self._tasks.put((fn, future))
        if self._idle.is_set():
            self._run_tasks()
        return future.result()

    def _run_tasks(self) -> None:
        while True:
            try:
                fn, future = self._tasks.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn())
            except Exception as e:  # handed to the waiting GUI thread
                future.set_exception(e)

    def _export(self, fmt: str) -> Path:
        trainer = self.trainer
        out = Path(trainer.run_dir) / "exports" / f"{trainer.method}-step{trainer.step:06d}.{fmt}"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_splats(out, trainer.model.to_splats())
        return out
