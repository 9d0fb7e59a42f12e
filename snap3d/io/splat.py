"""Gaussian splats as ``.splat``, the raw format of antimatter15's WebGL viewer.

No header: the file is N records of 32 bytes, little endian::

    3 x float32   position (x, y, z), as in SplatData.means
    3 x float32   scale, linear: exp(SplatData.scales)
    4 x uint8     R, G, B, A: round(255 * (0.5 + SH_C0 * sh0)), round(255 * sigmoid(opacity))
    4 x uint8     quaternion (w, x, y, z), normalised: round(128 * q + 128), clamped to 0..255

Records are conventionally sorted by importance, exp(sum of log scales) * sigmoid(opacity),
largest first, so that a viewer streaming the file shows the big opaque splats first.
Axes are stored as given (the viewer expects the PLY's OpenCV axes, like snap3d).

What a round trip loses: all higher-order SH (loaded back at degree 0, view-independent
colour only); colour and alpha to 8-bit steps (DC colours are clamped to [0, 1]; alpha 0
and 255 load as logits of 1/1020 and 1 - 1/1020, not -inf/+inf); rotations to steps of 1/128
per normalised component; and the order of the Gaussians when sorted. Positions are exact;
scales are exact up to float32 rounding of exp/log.
"""

from __future__ import annotations

import os

import numpy as np

from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_write
from snap3d.io.splats import (
    SH_C0,
    SplatData,
    byte_to_opacity,
    opacity_to_byte,
    read_bytes,
    round_half_away,
    splat_data_from_numpy,
    splat_data_to_numpy,
    unit_quats,
    unit_to_byte,
)

__all__ = ["load_splat", "save_splat"]

_RECORD = np.dtype(
    [("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)]
)


def save_splat(path: str | os.PathLike, splats: SplatData, sort: bool = True) -> None:
    """Write ``splats`` as an antimatter15 ``.splat`` file (32 bytes per Gaussian), atomically.

    Args:
        path: the ``.splat`` file to write.
        splats: the Gaussians; validated first. Higher-order SH are dropped.
        sort: order records by importance (exp(sum scales) * sigmoid(opacity)),
            descending, as viewers expect; False keeps the given order.

    Raises:
        Snap3dError: naming ``path``, if ``splats`` is invalid or a scale overflows float32.
    """
    splats.validate(path)
    a = splat_data_to_numpy(splats)
    n = a["means"].shape[0]
    records = np.empty(n, dtype=_RECORD)
    records["position"] = a["means"]
    with np.errstate(over="ignore"):
        records["scale"] = np.exp(a["scales"])
    if not np.isfinite(records["scale"]).all():
        raise Snap3dError("a scale is too large for float32 once exponentiated", path)
    records["rgba"][:, :3] = unit_to_byte(0.5 + SH_C0 * a["sh0"].reshape(n, 3))
    records["rgba"][:, 3] = opacity_to_byte(a["opacities"])
    q = unit_quats(a["quats"])
    records["rotation"] = np.clip(round_half_away(q * 128 + 128), 0, 255).astype(np.uint8)
    if sort:
        log_importance = a["scales"].astype(np.float64).sum(axis=1) - np.logaddexp(
            0.0, -a["opacities"].astype(np.float64)
        )
        records = records[np.argsort(-log_importance, kind="stable")]
    with atomic_write(path) as f:
        f.write(records.tobytes())


def load_splat(path: str | os.PathLike) -> SplatData:
    """Read Gaussians from an antimatter15 ``.splat`` file.

    Args:
        path: the ``.splat`` file.

    Returns:
        SplatData at SH degree 0 (shN is [N, 0, 3]), in the file's order; quats are the
        decoded (b - 128) / 128 bytes, normalised only up to 8-bit rounding.

    Raises:
        Snap3dError: naming ``path``, if it is missing, its size is not a multiple of
            32 bytes (truncated), or it holds non-finite or non-positive scales.
    """
    data = read_bytes(path)
    if len(data) % _RECORD.itemsize:
        raise Snap3dError(
            f"truncated .splat: {len(data)} bytes is not a whole number of 32-byte records", path
        )
    records = np.frombuffer(data, dtype=_RECORD)
    n = len(records)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = np.log(records["scale"])
    rgb = records["rgba"][:, :3].astype(np.float32) / 255.0
    splats = splat_data_from_numpy(
        means=records["position"],
        quats=(records["rotation"].astype(np.float32) - 128.0) / 128.0,
        scales=scales,
        opacities=byte_to_opacity(records["rgba"][:, 3]),
        sh0=((rgb - 0.5) / SH_C0).reshape(n, 1, 3),
        shN=np.zeros((n, 0, 3), np.float32),
    )
    splats.validate(path)
    return splats
