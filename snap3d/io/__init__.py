"""Readers and writers for 3D scene files.

Gaussian splats: one container, `SplatData`, and three formats chosen by extension::

    .ply     Inria/gsplat layout, float32, lossless          4 * (17 + 3K) bytes/Gaussian
    .splat   antimatter15, SH degree 0, 8-bit colour         32 bytes/Gaussian
    .spz     Niantic, gzip of quantised attributes           19 + 3K bytes/Gaussian before gzip

Every writer writes atomically (`atomic_write`, `atomic_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_dir, atomic_write
from snap3d.io.ply import load_ply, save_ply
from snap3d.io.splat import load_splat, save_splat
from snap3d.io.splats import SH_C0, SplatData
from snap3d.io.spz import SpzHeader, load_spz, read_spz_header, save_spz

__all__ = [
    "SH_C0",
    "SplatData",
    "SpzHeader",
    "atomic_dir",
    "atomic_write",
    "load_ply",
    "load_splat",
    "load_splats",
    "load_spz",
    "read_spz_header",
    "save_ply",
    "save_splat",
    "save_splats",
    "save_spz",
]

_LOADERS = {".ply": load_ply, ".splat": load_splat, ".spz": load_spz}
_SAVERS = {".ply": save_ply, ".splat": save_splat, ".spz": save_spz}


def _format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _LOADERS:
        raise Snap3dError(
            f"unknown splat file extension {suffix!r}; expected .ply, .splat or .spz", path
        )
    return suffix


def load_splats(path: str | os.PathLike) -> SplatData:
    """Read Gaussians from a ``.ply``, ``.splat`` or ``.spz`` file, by its extension.

    Each format's defaults apply (SPZ: RUB axes in the file). Raises Snap3dError naming
    the file if it is missing, truncated, corrupt, of the wrong kind or holds NaN values.
    """
    return _LOADERS[_format(path)](path)


def save_splats(path: str | os.PathLike, splats: SplatData) -> None:
    """Write Gaussians to a ``.ply``, ``.splat`` or ``.spz`` file, by its extension, atomically.

    Each format's defaults apply (``.splat`` sorted by importance, SPZ version 3 in RUB axes).
    """
    _SAVERS[_format(path)](path, splats)
