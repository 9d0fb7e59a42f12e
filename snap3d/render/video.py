"""``snap3d render``: frames or an mp4 of a trained run along a camera path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from snap3d.cameras import Cameras
from snap3d.errors import Snap3dError
from snap3d.render.paths import load_camera_path, orbit_path


def load_train_cameras(run_dir: Path) -> Cameras:
    """The training cameras a run saved in ``cameras.json``."""
    import json

    path = Path(run_dir) / "cameras.json"
    if not path.is_file():
        raise Snap3dError("run has no cameras.json (was it trained by snap3d?)", run_dir)
    return Cameras.from_dict(json.loads(path.read_text()))


@torch.no_grad()
def render_frames(model, cameras: Cameras, times: list[float] | None = None) -> list[np.ndarray]:
    """Render each camera (at ``times[i]`` for dynamic models) as uint8 [H,W,3] arrays."""
    device = next(iter(model.parameters())).device
    frames = []
    for i in range(len(cameras)):
        cam = cameras[i]
        if times is not None:
            cam.times = torch.tensor([times[i]], dtype=torch.float32)
        rgb = model.render(cam.to(device)).rgb[0].clamp(0, 1).cpu().numpy()
        frames.append((rgb * 255 + 0.5).astype(np.uint8))
    return frames


def write_frames(frames: list[np.ndarray], output: Path, fps: int = 24) -> Path:
    """Write an .mp4 (imageio-ffmpeg, H.264) or, for any other path, a folder of PNGs.

    Both appear at ``output`` only when complete (temporary name, then rename).
    """
    import os
    import tempfile

    import imageio.v2 as imageio

    from snap3d.io.atomic import atomic_dir

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() != ".mp4":
        with atomic_dir(output) as tmp:
            for i, frame in enumerate(frames):
                imageio.imwrite(tmp / f"{i:05d}.png", frame)
        return output
    try:
        import imageio_ffmpeg  # noqa: F401  (imageio's mp4 writer; else it picks another plugin)
    except ImportError:
        raise Snap3dError(
            "writing an .mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg); "
            "or give a path without .mp4 to write PNG frames",
            output,
        ) from None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".mp4", dir=output.parent)
    os.close(fd)
    try:
        # H.264 in yuv420p needs even sizes: crop the last row/column when odd.
        h, w = frames[0].shape[:2]
        with imageio.get_writer(
            tmp_name, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1
        ) as writer:
            for frame in frames:
                writer.append_data(frame[: h - h % 2, : w - w % 2])
        os.replace(tmp_name, output)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return output


def render_command(args) -> None:
    from snap3d.train import load_model, resolve_device

    device = resolve_device(args.device)
    model, cfg, _ = load_model(args.run, device)
    train_cams = load_train_cameras(args.run)
    if args.camera_path is not None:
        cameras = load_camera_path(args.camera_path, default=train_cams)
        name = args.camera_path.stem
    elif args.orbit > 0:
        cameras = orbit_path(train_cams, args.orbit)
        name = "orbit"
    else:
        raise Snap3dError("say what to render: --orbit N or --camera-path FILE")
    if args.width or args.height:
        w = args.width or round(cameras.width * args.height / cameras.height)
        cameras = cameras.rescaled(w / cameras.width)
    times = None
    if cfg["scene"].get("time_range") is not None:
        n = len(cameras)
        t0, t1 = cfg["scene"]["time_range"]  # sweep the scene's own time range
        times = (
            [args.time] * n
            if args.time is not None
            else [t0 + (t1 - t0) * i / max(n - 1, 1) for i in range(n)]
        )
    frames = render_frames(model, cameras, times)
    output = args.output or Path(args.run) / "render" / f"{name}.mp4"
    print(f"wrote {write_frames(frames, output, args.fps)} ({len(frames)} frames)")
