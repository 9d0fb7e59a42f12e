"""The compact LPGS file: parents, hash tables and decoder weights in one small file.

Layout (version 1, little-endian)::

    offset  size  content
    0       4     magic b"LPGS"
    4       4     uint32 format version (1)
    8       4     uint32 n, length of the header
    12      n     header: UTF-8 JSON, below
    12 + n  rest  body: one zlib (deflate) stream; inflated, it is the sections listed in
                  the header, back to back in that order, each C-ordered

The header holds ``config`` (the LPGSConfig), ``scene`` (the SceneMeta), ``num_parents``,
``body_bytes`` (the inflated body's length) and ``sections``: one object per tensor of the
model's state, with its ``name`` (the state_dict key), ``shape`` and ``encoding``:

=========  ==================================================================================
encoding   stored as, and decoded by
=========  ==================================================================================
``f32``    float32
``f16``    IEEE float16
``u16``    uint16 q, value = min + q / 65535 * (max - min); ``min``/``max`` per channel of the
           last axis (lists) or for the whole tensor (numbers)
``u8``     uint8 q, the same with 255
``i8``     G float32 scales, then int8 q: value = q * scale of its group; the groups are
           runs of consecutive elements of the flattened tensor, ``offsets`` their G + 1
           element offsets (hash tables: one group per level; weights: one per row)
=========  ==================================================================================

What the tensors mean, and how children are decoded from them, is documented in
``snap3d.representations.lpgs`` (a phone decodes the children once, then renders splats):
``parents.means`` [P,3], ``parents.scales`` [P], ``parents.opacities`` [P], ``hash.params``
(tiny-cuda-nn's HashGrid layout, ``snap3d.representations.hashgrid``), the MLP layers
``input_layer``, ``hidden.i``, ``head`` (``weight`` [out,in], ``bias`` [out]),
``child_embedding`` [K,H], and the buffers ``pattern`` [K,3], ``box`` [2,3], ``background``.

Precisions: ``lossless`` stores everything as f32 (the loaded model equals the saved one
bit for bit); ``compact`` (default) stores positions as u16 over the parents' bounding box,
the other parent values (size, opacity, features) as u8 per channel, the hash tables as i8
with a scale per level, the input and hidden layers' weights and the child embedding as
i8 with a scale per row, the output layer's weights (``head.weight``) and all biases as
f16, and buffers as f32. In ``compact``, hash-table entries that no parent reads are
written as zeros (they never influence a child), which deflates well.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_write
from snap3d.io.splats import read_bytes

if TYPE_CHECKING:
    from snap3d.representations.lpgs import LPGSModel

MAGIC = b"LPGS"
VERSION = 1
Precision = Literal["compact", "lossless"]
_PREFIX = struct.Struct("<4sII")
_DTYPES = {"f32": "<f4", "f16": "<f2", "u16": "<u2", "u8": "u1", "i8": "i1"}
_LEVELS = {"u16": 65535, "u8": 255}
_COMPACT = {
    "parents.means": "u16",
    "parents.scales": "u8",
    "parents.opacities": "u8",
    "parents.features": "u8",
    # the output layer's errors go straight into every child: as i8 per row it cost
    # 0.13 dB on the bundled forward scene, as f16 0.01 dB, for about 1.5 KB more
    "head.weight": "f16",
}


@dataclass
class LPGSFile:
    """What an LPGS file holds: its header (JSON) and the decoded float32 tensors by name."""

    header: dict[str, Any]
    tensors: dict[str, Tensor]


def save_lpgs(path: str | os.PathLike, model: LPGSModel, precision: Precision = "compact") -> int:
    """Write ``model`` as an LPGS file, atomically; returns the file size in bytes."""
    from snap3d.train.checkpoint import config_to_dict

    if precision not in ("compact", "lossless"):
        raise Snap3dError(f"LPGS precision must be compact or lossless, got {precision!r}")
    state = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
    buffers = {name for name, _ in model.named_buffers()}
    grid = model.hash
    encodings = {
        name: "f32"
        if precision == "lossless" or name in buffers
        else _COMPACT.get(name, "i8" if tensor.dim() == 2 or name == "hash.params" else "f16")
        for name, tensor in state.items()
    }
    if precision == "compact":
        # the entries a reader's parents (with their decoded positions) never read
        means = _decode(*_encode(state["parents.means"], encodings["parents.means"]))
        entries, _ = grid.corners(model.normalized(means.to(model.box)).cpu())
        read = torch.zeros(
            state["hash.params"].numel() // grid.features_per_level, dtype=torch.bool
        )
        read[entries.flatten()] = True
        table = state["hash.params"].view(read.shape[0], -1)
        state["hash.params"] = table.masked_fill(~read[:, None], 0).flatten()
    sections, chunks = [], []
    for name, tensor in state.items():
        groups = [o * grid.features_per_level for o in grid.offsets]
        if name != "hash.params":
            groups = list(range(0, tensor.numel() + 1, max(tensor.shape[-1], 1)))
        section, data = _encode(tensor, encodings[name], groups)
        sections.append({"name": name, **section})
        chunks.append(data)
    body = b"".join(chunks)
    header = {
        "config": config_to_dict(model.config),
        "scene": model.scene.to_dict(),
        "num_parents": model.num_parents,
        "body_bytes": len(body),
        "sections": sections,
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    blob = _PREFIX.pack(MAGIC, VERSION, len(text)) + text + zlib.compress(body, 9)
    with atomic_write(path, "wb") as f:
        f.write(blob)
    return len(blob)


def read_lpgs(path: str | os.PathLike) -> LPGSFile:
    """Read an LPGS file's header and tensors (float32, CPU), raising Snap3dError naming the
    file when it is missing, truncated, corrupt or not an LPGS file."""
    blob = read_bytes(path)
    if len(blob) < _PREFIX.size:
        raise Snap3dError(f"truncated: {len(blob)} bytes is too short for an LPGS file", path)
    magic, version, n = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise Snap3dError(f"not an LPGS file (starts with {magic!r}, expected {MAGIC!r})", path)
    if version != VERSION:
        raise Snap3dError(f"LPGS version {version} is not supported (this reads {VERSION})", path)
    if len(blob) < _PREFIX.size + n:
        raise Snap3dError(f"truncated: the header needs {n} bytes", path)
    try:
        header = json.loads(blob[_PREFIX.size : _PREFIX.size + n].decode())
        sections = header["sections"]
        body_bytes = int(header["body_bytes"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise Snap3dError(f"corrupt LPGS header: {e}", path) from None
    try:
        inflater = zlib.decompressobj()
        body = inflater.decompress(blob[_PREFIX.size + n :])
    except zlib.error as e:
        raise Snap3dError(f"corrupt LPGS body: {e}", path) from None
    if not inflater.eof or len(body) != body_bytes:
        raise Snap3dError(
            f"truncated: the body inflates to {len(body)} of {body_bytes} bytes", path
        )
    tensors, offset = {}, 0
    for section in sections:
        size = _section_bytes(section)
        tensors[section["name"]] = _decode(section, body[offset : offset + size])
        offset += size
    if offset != body_bytes:
        raise Snap3dError(f"corrupt LPGS file: sections hold {offset} of {body_bytes} bytes", path)
    return LPGSFile(header, tensors)


def load_lpgs(path: str | os.PathLike, device: torch.device | str = "cpu") -> LPGSModel:
    """Rebuild the LPGS model an LPGS file holds (eval mode, on ``device``)."""
    from snap3d.representations.base import SceneMeta
    from snap3d.representations.lpgs import LPGSConfig, LPGSModel
    from snap3d.train.checkpoint import config_from_dict

    file = read_lpgs(path)
    try:
        config = config_from_dict(LPGSConfig, file.header["config"])
        scene = SceneMeta.from_dict(file.header["scene"])
        model = LPGSModel(config, scene)
        model.load_checkpoint_state(file.tensors)
    except (KeyError, TypeError, RuntimeError, Snap3dError) as e:
        raise Snap3dError(f"LPGS file does not describe a model: {e}", path) from None
    return model.to(device).eval()


# -- section codecs ---------------------------------------------------------------------


def _encode(tensor: Tensor, encoding: str, groups: list[int] | None = None) -> tuple[dict, bytes]:
    """(section fields: shape, encoding and its constants; the encoded bytes). ``groups``:
    the element offsets of the groups sharing an i8 scale."""
    section: dict[str, Any] = {"shape": list(tensor.shape), "encoding": encoding}
    x = tensor.numpy().astype(np.float64)
    if encoding in _LEVELS:
        axis = 0 if x.ndim == 2 and x.shape[0] > 0 else None
        lo = np.float32(x.min(axis)) if x.size else np.zeros((), np.float32)
        hi = np.float32(x.max(axis)) if x.size else np.zeros((), np.float32)
        lo, hi = lo.astype(np.float64), hi.astype(np.float64)
        x = np.rint((x - lo) / np.where(hi > lo, hi - lo, 1.0) * _LEVELS[encoding])
        section["min"], section["max"] = lo.tolist(), hi.tolist()
    elif encoding == "i8":
        x = x.reshape(-1)
        scales = np.ones(len(groups) - 1, np.float32)
        for g, (start, end) in enumerate(zip(groups[:-1], groups[1:], strict=True)):
            scales[g] = max(np.abs(x[start:end]).max(initial=0.0), 1e-30) / 127
            x[start:end] = np.rint(x[start:end] / np.float64(scales[g]))
        section["offsets"] = groups
        return section, scales.astype("<f4").tobytes() + x.astype("i1").tobytes()
    return section, np.ascontiguousarray(x.astype(_DTYPES[encoding])).tobytes()


def _section_bytes(section: dict[str, Any]) -> int:
    size = int(np.prod(section["shape"], dtype=np.int64))
    size *= np.dtype(_DTYPES[section["encoding"]]).itemsize
    return size + 4 * (len(section["offsets"]) - 1 if section["encoding"] == "i8" else 0)


def _decode(section: dict[str, Any], data: bytes) -> Tensor:
    encoding = section["encoding"]
    if encoding == "i8":
        groups = len(section["offsets"]) - 1
        scales = np.frombuffer(data[: 4 * groups], dtype="<f4").astype(np.float64)
        data = data[4 * groups :]
    x = np.frombuffer(data, dtype=_DTYPES[encoding]).astype(np.float64)
    if encoding in _LEVELS:
        shape = section["shape"]
        lo, hi = np.asarray(section["min"]), np.asarray(section["max"])
        x = x.reshape(shape) / _LEVELS[encoding] * (hi - lo) + lo
    elif encoding == "i8":
        offsets = section["offsets"]
        for group, scale in enumerate(scales):
            x[offsets[group] : offsets[group + 1]] *= scale
    return torch.from_numpy(x.astype(np.float32).reshape(section["shape"]))
