"""Gaussian splats as PLY, the layout of the Inria 3DGS code (read by nerfstudio, gsplat,
SuperSplat, viser and most viewers).

One ``vertex`` element, one row per Gaussian, float32 properties in this order::

    x y z                    means
    nx ny nz                 zeros (Inria writes them; some readers expect them)
    f_dc_0 f_dc_1 f_dc_2     sh0 (R, G, B)
    f_rest_0 .. f_rest_{3K-1} shN, channel-major: all K coefficients of R, then G, then B
    opacity                  opacity logit
    scale_0 scale_1 scale_2  log scales
    rot_0 rot_1 rot_2 rot_3  quaternion (w, x, y, z)

Values are stored exactly as held in `SplatData` (no activation, no change of axes), so a
round trip is bit-exact. PLY files conventionally hold OpenCV axes (x right, y down,
z forward), snap3d's convention too.

The reader takes any PLY (ASCII, binary little or big endian) whose vertex element has
those properties by name, in any order and of any numeric type (double and uchar
included); other properties and other fixed-size elements are skipped.
"""

from __future__ import annotations

import os
import re

import numpy as np

from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_write
from snap3d.io.splats import (
    SplatData,
    read_bytes,
    sh_degree_of_coefficients,
    splat_data_from_numpy,
    splat_data_to_numpy,
)

__all__ = ["load_ply", "save_ply"]

_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_REQUIRED = [
    *("x", "y", "z"),
    *("f_dc_0", "f_dc_1", "f_dc_2"),
    "opacity",
    *("scale_0", "scale_1", "scale_2"),
    *("rot_0", "rot_1", "rot_2", "rot_3"),
]
_F_REST = re.compile(r"f_rest_(\d+)")


def save_ply(path: str | os.PathLike, splats: SplatData) -> None:
    """Write ``splats`` as a binary little-endian Inria-layout PLY, atomically.

    Args:
        path: the ``.ply`` file to write.
        splats: the Gaussians; validated first (Snap3dError naming ``path`` if invalid).

    Size: 4 * (17 + 3K) bytes per Gaussian plus the header: 248 bytes at SH degree 3.
    """
    splats.validate(path)
    a = splat_data_to_numpy(splats)
    n, k = a["shN"].shape[:2]
    columns = np.concatenate(
        [
            a["means"],
            np.zeros((n, 3), np.float32),
            a["sh0"].reshape(n, 3),
            a["shN"].transpose(0, 2, 1).reshape(n, 3 * k),
            a["opacities"].reshape(n, 1),
            a["scales"],
            a["quats"],
        ],
        axis=1,
    )
    names = [
        *("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"),
        *(f"f_rest_{i}" for i in range(3 * k)),
        "opacity",
        *("scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"),
    ]
    header = "".join(
        [
            "ply\n",
            "format binary_little_endian 1.0\n",
            f"element vertex {n}\n",
            *(f"property float {name}\n" for name in names),
            "end_header\n",
        ]
    )
    with atomic_write(path) as f:
        f.write(header.encode("ascii"))
        f.write(columns.astype("<f4").tobytes())


class _Element:
    """One ``element`` of a PLY header: its name, row count and properties."""

    def __init__(self, name: str, count: int):
        self.name = name
        self.count = count
        self.properties: list[tuple[str, str]] = []  # (name, numpy type code)
        self.has_list = False

    def dtype(self, endian: str, path: str | os.PathLike) -> np.dtype:
        try:
            return np.dtype([(name, endian + code) for name, code in self.properties])
        except ValueError:
            raise Snap3dError(f"element {self.name} repeats a property name", path) from None


def parse_ply_header(data: bytes, path: str | os.PathLike) -> tuple[str, list[_Element], int]:
    """Return (format, elements, offset of the body) of a PLY file's bytes."""
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise Snap3dError("not a PLY file (it does not start with 'ply')", path)
    end = re.search(rb"\nend_header[ \t]*\r?\n", data)
    if end is None:
        raise Snap3dError("truncated PLY header (no end_header line)", path)
    try:
        lines = data[: end.start()].decode("ascii").splitlines()[1:]
    except UnicodeDecodeError:
        raise Snap3dError("PLY header is not ASCII text", path) from None
    form = None
    elements: list[_Element] = []
    for line in lines:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                form = words[1]
                if form not in _FORMATS:
                    raise Snap3dError(f"unknown PLY format {form!r}", path)
            elif words[0] == "element":
                elements.append(_Element(words[1], int(words[2])))
            elif words[0] == "property" and words[1] == "list":
                elements[-1].has_list = True
            elif words[0] == "property":
                if words[1] not in _TYPES:
                    raise Snap3dError(f"unknown PLY property type {words[1]!r}", path)
                elements[-1].properties.append((words[2], _TYPES[words[1]]))
            else:
                raise ValueError
        except (IndexError, ValueError):
            raise Snap3dError(f"bad PLY header line {line!r}", path) from None
    if form is None:
        raise Snap3dError("PLY header has no format line", path)
    return form, elements, end.end()


def read_ply_vertices(data: bytes, path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Return the vertex element's columns of a PLY file's bytes, by property name, each
    in its declared type (uchar -> uint8, float -> float32, ...)."""
    form, elements, offset = parse_ply_header(data, path)
    names = [e.name for e in elements]
    if "chunk" in names:
        raise Snap3dError("compressed (SuperSplat) PLY files are not supported", path)
    if "vertex" not in names:
        raise Snap3dError("PLY file has no vertex element", path)
    vertex = elements[names.index("vertex")]
    before = elements[: names.index("vertex")]

    if form == "ascii":
        lines = data[offset:].decode("ascii", errors="replace").splitlines()
        start = sum(e.count for e in before)
        rows = [line.split() for line in lines[start : start + vertex.count]]
        if len(rows) < vertex.count:
            raise Snap3dError(
                f"truncated PLY: {len(rows)} of {vertex.count} vertex lines present", path
            )
        if vertex.has_list or any(len(row) != len(vertex.properties) for row in rows):
            raise Snap3dError(
                f"wrong property count: vertex lines must have {len(vertex.properties)} values",
                path,
            )
        try:
            table = np.array(rows, dtype=np.float64).reshape(vertex.count, -1)
        except ValueError:
            raise Snap3dError("PLY vertex data has a value that is not a number", path) from None
        types = vertex.dtype("<", path)  # the declared types, as the binary path returns
        return {
            name: table[:, i].astype(types[name]) for i, (name, _) in enumerate(vertex.properties)
        }

    endian = _FORMATS[form]
    for element in [*before, vertex]:
        if element.has_list:
            raise Snap3dError(
                f"element {element.name} has list properties, which splat PLYs do not use", path
            )
    offset += sum(e.count * e.dtype(endian, path).itemsize for e in before)
    dtype = vertex.dtype(endian, path)
    needed = offset + vertex.count * dtype.itemsize
    if len(data) < needed:
        raise Snap3dError(
            f"truncated PLY: {len(data)} bytes, the header announces at least {needed}", path
        )
    table = np.frombuffer(data, dtype=dtype, count=vertex.count, offset=offset)
    return {name: table[name] for name, _ in vertex.properties}


def load_ply(path: str | os.PathLike) -> SplatData:
    """Read Gaussians from an Inria-layout PLY file (see the module docstring).

    Args:
        path: the ``.ply`` file.

    Returns:
        SplatData with float32 CPU tensors, in the file's order and frame.

    Raises:
        Snap3dError: naming ``path``, if the file is missing, truncated or not a PLY,
            lacks a property, has an f_rest count that is not 3K with K in
            {0, 3, 8, 15}, or holds NaN or infinite values.
    """
    columns = read_ply_vertices(read_bytes(path), path)
    missing = [name for name in _REQUIRED if name not in columns]
    if missing:
        raise Snap3dError(f"PLY vertex element lacks {', '.join(missing)}", path)
    rest = sorted(int(m.group(1)) for name in columns if (m := _F_REST.fullmatch(name)))
    if rest != list(range(len(rest))) or len(rest) % 3:
        raise Snap3dError(
            f"wrong property count: {len(rest)} f_rest properties, expected f_rest_0 .. "
            "f_rest_{3K-1} with K in 0, 3, 8, 15",
            path,
        )
    k = len(rest) // 3
    sh_degree_of_coefficients(k, path)
    n = len(columns["x"])

    def stack(names: list[str]) -> np.ndarray:
        return np.stack([columns[name] for name in names], axis=1).astype(np.float32)

    shN = np.zeros((n, 0, 3), np.float32)
    if k:
        shN = stack([f"f_rest_{i}" for i in range(3 * k)]).reshape(n, 3, k).transpose(0, 2, 1)
    splats = splat_data_from_numpy(
        means=stack(["x", "y", "z"]),
        quats=stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        scales=stack(["scale_0", "scale_1", "scale_2"]),
        opacities=columns["opacity"].astype(np.float32),
        sh0=stack(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        shN=shN,
    )
    splats.validate(path)
    return splats
