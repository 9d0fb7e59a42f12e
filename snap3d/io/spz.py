"""Gaussian splats as ``.spz``, Niantic's compressed format (versions 2 and 3).

A file is a gzip stream of a 16-byte little-endian header followed by the attributes,
each stored for all Gaussians before the next::

    header     uint32 magic 0x5053474e ("NGSP"), uint32 version, uint32 N,
               uint8 SH degree, uint8 fractional bits, uint8 flags (0x1: antialiased,
               0x2: extension records follow the header), uint8 reserved (0)
    positions  N x 3 x 3 bytes   24-bit two's-complement fixed point, round(p * 2^bits)
    alphas     N bytes           round(255 * sigmoid(opacity))
    colours    N x 3 bytes       round(sh0 * 0.15 * 255 + 127.5)
    scales     N x 3 bytes       round((log scale + 10) * 16)
    rotations  v3: N x 4 bytes   uint32: bits 30-31 index of the largest |component| of the
                                 unit quaternion (x, y, z, w), made positive; then the other
                                 three in index order, 10 bits each from bit 20 down:
                                 sign bit, then 9-bit round(511 * |c| / sqrt(1/2))
               v2: N x 3 bytes   x, y, z of the unit quaternion made w >= 0,
                                 round(127.5 * c + 127.5)
    SH         N x K x 3 bytes   coefficient-major, channel inner (as shN [N, K, 3]):
                                 round(c * 128) + 128, rounded to a multiple of 8 for
                                 degree 1 (5 bits) and of 16 for degrees 2 and 3 (4 bits)

All bytes are clamped to 0..255 and "round" is to nearest, ties away from zero, as in
the reference C++ (nianticlabs/spz, load-spz.cc). Decoding inverts each step; the
largest quaternion component (v3), or w (v2), is sqrt(1 - sum of the others' squares).

The colour scale 0.15 (not SH_C0 = 0.282) is the format's: it leaves room for DC colours
beyond [0, 1] that higher SH bands bring back, covering sh0 in [-3.33, 3.33].

Axes: the SPZ documentation states that files hold RUB axes (x right, y up, z back:
OpenGL, three.js), while PLY files and snap3d hold RDF (OpenCV: x right, y down,
z forward). With the default ``axes="RUB"`` we convert on write and back on read, as
Niantic's Python ``ply_to_spz`` does: a 180-degree rotation about x, which negates the
y and z of positions and of the quaternion's vector part, and negates each SH
coefficient whose basis function is odd under (y, z) -> (-y, -z) (in gsplat's order,
degree 1: - - +, degree 2: - + + - +, degree 3: - + - - + - +); the DC term is unchanged.
Some tools (Niantic's C++ ``ply_to_spz`` CLI with default options among them) copy PLY
axes unchanged into the file; read and write those with ``axes="RDF"``, which converts
nothing.

What a round trip loses: positions to steps of 2^-bits (and |p| must stay below
2^(23 - bits), 2048 at the default 12 bits); log scales to steps of 1/16, clamped to
[-10, 5.94]; alpha and DC colour to 8 bits (alpha bytes 0 and 255 load as logits of
1/1020 and 1 - 1/1020, not -inf/+inf; sh0 clamped to [-3.33, 3.33]); rotations by at
most 0.005 rad (v3) or, v2, about 0.01 rad typically and up to 0.25 rad near w = 0 (v2
cannot store a zero component: byte 128 is 0.0039); SH to the buckets above, clamped to
about [-1, 1]; quaternion norms (unit on load). The antialiased flag can be written and
is read by `read_spz_header`. Files using SPZ extensions (flag 0x2), version 1 (float16)
and the newer uncompressed version 4 layout are refused.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Literal, NamedTuple

import numpy as np

from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_write
from snap3d.io.splats import (
    SplatData,
    byte_to_opacity,
    opacity_to_byte,
    read_bytes,
    round_half_away,
    sh_degree_of_coefficients,
    splat_data_from_numpy,
    splat_data_to_numpy,
    unit_quats,
)

__all__ = ["SpzHeader", "load_spz", "read_spz_header", "save_spz"]

SPZ_MAGIC = 0x5053474E
_HEADER = struct.Struct("<IIIBBBB")
_FLAG_ANTIALIASED = 0x1
_FLAG_EXTENSIONS = 0x2
_COLOR_SCALE = np.float32(0.15)
_SQRT1_2 = np.sqrt(0.5)
_SH_BUCKET_DEGREE_1 = 1 << (8 - 5)
_SH_BUCKET_REST = 1 << (8 - 4)
# Indices (into x, y, z, w) of the three components a v3 rotation stores, by largest index.
_SMALLEST_THREE = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])

Axes = Literal["RUB", "RDF"]
# Sign flips from snap3d's RDF axes to the file's: positions (x, y, z), quaternion (w, x, y, z)
# and the 15 SH coefficients of degrees 1..3 (gsplat's order). The flip is its own inverse.
_FLIPS = {
    "RUB": (
        np.array([1, -1, -1], np.float32),
        np.array([1, 1, -1, -1], np.float32),
        np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], np.float32),
    ),
    "RDF": (np.ones(3, np.float32), np.ones(4, np.float32), np.ones(15, np.float32)),
}


class SpzHeader(NamedTuple):
    """The fixed header of an SPZ file."""

    version: int
    num_points: int
    sh_degree: int
    fractional_bits: int
    antialiased: bool


def _flips(axes: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if axes not in _FLIPS:
        raise ValueError(f"axes must be 'RUB' or 'RDF', not {axes!r}")
    return _FLIPS[axes]


def _sh_buckets(k: int) -> np.ndarray:
    """[K] quantisation step (in 1/128 units) of each SH coefficient."""
    return np.where(np.arange(k) < 3, _SH_BUCKET_DEGREE_1, _SH_BUCKET_REST)


def _encode_rotations(quats_xyzw: np.ndarray, version: int) -> np.ndarray:
    """[N, 4] unit quaternions (x, y, z, w) -> [N, 4] (v3) or [N, 3] (v2) uint8."""
    n = len(quats_xyzw)
    if version == 2:
        q = np.where(quats_xyzw[:, 3:] < 0, -quats_xyzw, quats_xyzw)
        return np.clip(round_half_away(q[:, :3] * 127.5 + 127.5), 0, 255).astype(np.uint8)
    largest = np.argmax(np.abs(quats_xyzw), axis=1)
    rows = np.arange(n)
    q = np.where(quats_xyzw[rows, largest][:, None] < 0, -quats_xyzw, quats_xyzw)
    kept = q[rows[:, None], _SMALLEST_THREE[largest]]
    mags = np.minimum(np.floor(511 * np.abs(kept) / _SQRT1_2 + 0.5), 511).astype(np.uint32)
    fields = ((kept < 0).astype(np.uint32) << 9) | mags
    packed = (
        (largest.astype(np.uint32) << 30)
        | (fields[:, 0] << 20)
        | (fields[:, 1] << 10)
        | fields[:, 2]
    )
    return packed.astype("<u4").view(np.uint8).reshape(n, 4)


def _decode_rotations(data: np.ndarray, version: int) -> np.ndarray:
    """[N, 4] (v3) or [N, 3] (v2) uint8 -> [N, 4] unit quaternions (x, y, z, w), float64."""
    n = len(data)
    q = np.zeros((n, 4))
    if version == 2:
        q[:, :3] = data / 127.5 - 1.0
        q[:, 3] = np.sqrt(np.maximum(0.0, 1.0 - np.sum(q[:, :3] ** 2, axis=1)))
        return q
    packed = np.ascontiguousarray(data).view("<u4")[:, 0].astype(np.int64)
    largest = packed >> 30
    rows = np.arange(n)
    for j, shift in enumerate((20, 10, 0)):
        field = (packed >> shift) & 0x3FF
        value = _SQRT1_2 * (field & 0x1FF) / 511.0
        q[rows, _SMALLEST_THREE[largest, j]] = np.where(field >> 9, -value, value)
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - np.sum(q**2, axis=1)))
    return q


def _encode(
    splats: SplatData,
    version: int,
    fractional_bits: int,
    antialiased: bool,
    axes: str,
    path: str | os.PathLike,
) -> bytes:
    """The uncompressed SPZ stream (header and attributes) of ``splats``."""
    flip_p, flip_q, flip_sh = _flips(axes)
    a = splat_data_to_numpy(splats)
    n, k = a["shN"].shape[:2]

    fixed = round_half_away(a["means"] * flip_p * np.float32(2.0**fractional_bits))
    limit = 1 << 23
    if n and not (-limit <= fixed.min() and fixed.max() < limit):
        reach = float(np.abs(a["means"]).max())
        raise Snap3dError(
            f"positions reach {reach:.4g}, beyond the 24-bit fixed-point range "
            f"+-{2.0 ** (23 - fractional_bits):g} at {fractional_bits} fractional bits; "
            "pass fewer fractional_bits",
            path,
        )
    positions = fixed.astype("<i4").view(np.uint8).reshape(n, 3, 4)[:, :, :3]

    colors = round_half_away(a["sh0"].reshape(n, 3) * (_COLOR_SCALE * np.float32(255)) + 127.5)
    scales = round_half_away((a["scales"] + np.float32(10)) * np.float32(16))
    quats = unit_quats(a["quats"]) * flip_q
    rotations = _encode_rotations(quats[:, [1, 2, 3, 0]], version)

    buckets = _sh_buckets(k)[None, :, None]
    sh = round_half_away(a["shN"] * flip_sh[:k, None] * np.float32(128)).astype(np.int64) + 128
    sh = (sh + buckets // 2) // buckets * buckets

    header = _HEADER.pack(
        SPZ_MAGIC,
        version,
        n,
        sh_degree_of_coefficients(k),
        fractional_bits,
        _FLAG_ANTIALIASED if antialiased else 0,
        0,
    )
    sections = [
        positions,
        opacity_to_byte(a["opacities"]),
        np.clip(colors, 0, 255).astype(np.uint8),
        np.clip(scales, 0, 255).astype(np.uint8),
        rotations,
        np.clip(sh, 0, 255).astype(np.uint8),
    ]
    return header + b"".join(np.ascontiguousarray(s).tobytes() for s in sections)


def save_spz(
    path: str | os.PathLike,
    splats: SplatData,
    version: Literal[2, 3] = 3,
    fractional_bits: int = 12,
    antialiased: bool = False,
    axes: Axes = "RUB",
) -> None:
    """Write ``splats`` as a gzip-compressed SPZ file, atomically.

    Args:
        path: the ``.spz`` file to write.
        splats: the Gaussians, in snap3d's (PLY's) axes; validated first.
        version: 3 (smallest-three rotations, 4 bytes) or 2 (x, y, z, 3 bytes).
        fractional_bits: fractional bits of the 24-bit fixed-point positions, 0..23;
            positions must lie within +-2^(23 - fractional_bits).
        antialiased: set the header flag telling viewers the splats were trained with
            mip-splatting antialiasing.
        axes: "RUB" (the format's stated convention; converts from ours) or "RDF"
            (store snap3d's axes as they are). See the module docstring.

    Size before gzip: 16 + N * (19 + 3K) bytes for v3, one less per Gaussian for v2:
    65 bytes per Gaussian at SH degree 3 (v3).

    Raises:
        Snap3dError: naming ``path``, if ``splats`` is invalid or positions are out of range.
    """
    if version not in (2, 3):
        raise ValueError(f"SPZ version must be 2 or 3, not {version!r}")
    if not 0 <= fractional_bits <= 23:
        raise ValueError(f"fractional_bits must be in 0..23, not {fractional_bits}")
    splats.validate(path)
    stream = _encode(splats, version, fractional_bits, antialiased, axes, path)
    with atomic_write(path) as f:
        f.write(gzip.compress(stream, compresslevel=6, mtime=0))


def _decompress(path: str | os.PathLike) -> bytes:
    """The uncompressed SPZ stream of the file at ``path``."""
    data = read_bytes(path)
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise Snap3dError(f"corrupt or truncated gzip stream ({e})", path) from None
    if data[:4] == struct.pack("<I", SPZ_MAGIC):
        # Uncompressed: the layout of version 4 files, which the version check refuses;
        # a bare version 2 or 3 stream is read as it is.
        return data
    raise Snap3dError("not an SPZ file: neither gzip-compressed nor starting with NGSP", path)


def _parse_header(stream: bytes, path: str | os.PathLike) -> SpzHeader:
    if len(stream) < _HEADER.size:
        raise Snap3dError(f"truncated SPZ: {len(stream)} bytes, less than the header", path)
    magic, version, n, degree, bits, flags, _ = _HEADER.unpack_from(stream)
    if magic != SPZ_MAGIC:
        raise Snap3dError(f"wrong magic 0x{magic:08x}; SPZ files start with 0x5053474e", path)
    if version not in (2, 3):
        raise Snap3dError(f"SPZ version {version} is not supported (snap3d reads 2 and 3)", path)
    if degree > 3:
        raise Snap3dError(f"SH degree {degree} is not supported (0..3)", path)
    if flags & _FLAG_EXTENSIONS:
        raise Snap3dError("the file uses SPZ extensions, which snap3d does not read", path)
    return SpzHeader(version, n, degree, bits, bool(flags & _FLAG_ANTIALIASED))


def read_spz_header(path: str | os.PathLike) -> SpzHeader:
    """Read and check the header of an SPZ file (decompressing the whole file)."""
    return _parse_header(_decompress(path), path)


def load_spz(path: str | os.PathLike, axes: Axes = "RUB") -> SplatData:
    """Read Gaussians from an SPZ file of version 2 or 3.

    Args:
        path: the ``.spz`` file.
        axes: the axes the file holds: "RUB" (the format's stated convention; converted
            to ours) or "RDF" (taken as they are). See the module docstring.

    Returns:
        SplatData with float32 CPU tensors in snap3d's axes; quats are unit (w, x, y, z).

    Raises:
        Snap3dError: naming ``path``, if the file is missing, not gzip, corrupt or
            truncated, has the wrong magic, an unsupported version, SH degree or
            extensions.
    """
    flip_p, flip_q, flip_sh = _flips(axes)
    stream = _decompress(path)
    header = _parse_header(stream, path)
    n, version = header.num_points, header.version
    k = (header.sh_degree + 1) ** 2 - 1
    rotation_bytes = 4 if version == 3 else 3
    sizes = [9 * n, n, 3 * n, 3 * n, rotation_bytes * n, 3 * k * n]
    needed = _HEADER.size + sum(sizes)
    if len(stream) < needed:
        raise Snap3dError(
            f"truncated SPZ: the header announces {n} Gaussians ({needed} bytes), "
            f"the stream has {len(stream)} bytes",
            path,
        )
    body = np.frombuffer(stream, np.uint8, count=needed - _HEADER.size, offset=_HEADER.size)
    positions, alphas, colors, scales, rotations, sh = np.split(body, np.cumsum(sizes)[:-1])

    fixed = positions.reshape(n * 3, 3).astype(np.int32)
    fixed = fixed[:, 0] | (fixed[:, 1] << 8) | (fixed[:, 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = fixed.reshape(n, 3).astype(np.float32) * np.float32(2.0**-header.fractional_bits)

    quats = _decode_rotations(rotations.reshape(n, rotation_bytes), version)[:, [3, 0, 1, 2]]
    sh0 = (colors.reshape(n, 1, 3).astype(np.float32) / np.float32(255) - np.float32(0.5)) / (
        _COLOR_SCALE
    )
    splats = splat_data_from_numpy(
        means=means * flip_p,
        quats=quats * flip_q,
        scales=scales.reshape(n, 3).astype(np.float32) / 16 - 10,
        opacities=byte_to_opacity(alphas),
        sh0=sh0,
        shN=(sh.reshape(n, k, 3).astype(np.float32) - 128) / 128 * flip_sh[:k, None],
    )
    splats.validate(path)
    return splats
