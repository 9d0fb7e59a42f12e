"""The trainer's own settings (the method's live in its config dataclass)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from snap3d.errors import Snap3dError


@dataclass
class TrainConfig:
    """Settings shared by every method."""

    data: Path | None = None
    """Scene folder (nerfstudio, Blender, D-NeRF, COLMAP or LLFF layout)."""
    output: Path | None = None
    """Run directory; default runs/<method>-<scene name>."""
    max_steps: int | None = None
    """Training steps; default the method's own."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """auto picks cuda, then mps, then cpu."""
    seed: int = 0
    downscale: float = 1.0
    """Divide the image resolution by this."""
    background: str = "white"
    """Colour RGBA images are composited on: white, black, or r,g,b."""
    eval_every: int = 0
    """Evaluate on the test split every N steps (0: only at the end)."""
    save_every: int = 1000
    """Write a checkpoint every N steps (and always at the end or on Ctrl-C)."""
    keep_checkpoints: int = 2
    resume: bool = False
    """Continue the run in --output from its latest checkpoint."""
    tensorboard: bool = False
    progress: bool = True
    viewer: bool = False
    """Serve the live viewer during training (needs snap3d[viewer])."""
    viewer_port: int = 8080
    eval_split: str = "test"


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else mps, else cpu; others are checked."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise Snap3dError("--device cuda was asked for but torch sees no CUDA device")
    if name == "mps" and not has_mps:
        raise Snap3dError("--device mps was asked for but this torch build has no MPS device")
    if name not in ("cpu", "cuda", "mps"):
        raise Snap3dError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    return torch.device(name)
