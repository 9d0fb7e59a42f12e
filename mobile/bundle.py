"""iPhone viewer bundles: export, format and validation.

A bundle is a folder ``NAME.snap3d`` (optionally also zipped as ``NAME.snap3d.zip``, the
same files at the zip's root) holding ``manifest.json`` and the assets it lists::

    splat      scene.spz            Gaussians, SPZ v3, Morton order (role splats)
               scene.ply            optional, lossless (role splats-ply)
    lpgs       parents.bin          parent means, log sizes, opacities (float32) and
                                    decoder inputs (float16) (role parents)
               decoder.bin          child decoder weights, float16 (role decoder-weights)
               decoder.mlpackage    Core ML: parent features -> children (role coreml)
               fallback.spz         the expanded children, SPZ v3 (role splats-fallback)
    lightslab  planes.bin           feature planes, float16 (role planes)
               decoder.bin          MLP weights, float16 (role decoder-weights)
               lightslab.mlpackage  Core ML: rays -> colour, alpha (role coreml)

The manifest follows ``schema/manifest.schema.json`` (JSON Schema 2020-12, shipped in the
package; ``format_version`` 1). It states the coordinate convention and units, the scene
box, a default camera and the training cameras (OpenCV camera-to-world, pixel
intrinsics), the background and resolution, the representation's decoding parameters
and equations, the layout of every raw tensor (asset, dtype, shape, byte offset) and,
for every asset, its path, role, byte size and sha256 (for a folder asset such as an
``.mlpackage``: of each file in it). `snap3d.mobile.reference` renders a bundle from
these files alone.

Raw tensor files (``.bin``) are the tensors one after another, little-endian, C order,
each starting at a multiple of 64 bytes (zeros between), as the manifest's ``tensors``
entries locate them. Weights that a Core ML package also holds are written as the
package holds them: float16, or, for a quantized export, the float16 values of the
dequantized int8 or palettized weights, so that every path on the phone (Core ML or a
Metal shader) runs the same numbers.

Exports are built in a temporary folder beside the target and renamed into place
(``snap3d.io.atomic_dir``), so a failed export leaves no bundle and no temporary folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from snap3d import __version__
from snap3d.errors import Snap3dError
from snap3d.io.atomic import atomic_dir, atomic_write

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Baked",
    "export_bundle",
    "read_manifest",
    "read_tensors",
    "schema",
    "validate",
    "validate_command",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REPRESENTATIONS = ("splat", "lpgs", "lightslab")
QUANTIZE = ("none", "int8", "palettize")
ALIGNMENT = 64
DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "manifest.schema.json"

#: What every Gaussian rasterizer of a bundle must do the same way (the constants of
#: ``snap3d.render.rasterize_gaussians``; its defaults add eps2d and the clipping planes).
GAUSSIAN_RULES = {
    "min_alpha": 1 / 255,
    "max_alpha": 0.999,
    "min_transmittance": 1e-4,
    "color": (
        "rgb = max(0, 0.5 + sum_i SH_i(normalize(mean - camera_centre)) coeff_i), real SH "
        "in gsplat's basis and order up to sh_degree; Gaussians composited front to back "
        "by view depth with alpha = min(max_alpha, opacity exp(-0.5 d^T conic d)), "
        "conic the inverse of the projected covariance plus eps2d I"
    ),
}


@functools.cache
def schema() -> dict:
    """The manifest's JSON Schema (``schema/manifest.schema.json``)."""
    return json.loads(SCHEMA_PATH.read_text())


@dataclass
class Baked:
    """What a representation's baker wrote into the bundle folder.

    Attributes:
        assets: one dict per asset (path, role, format, optional spz/description);
            sizes and checksums are added when the manifest is written.
        blocks: manifest entries of the representation (``gaussians``, ``lpgs``, ...).
        tensors: layout entries of the raw tensor files.
        coreml: descriptions of the Core ML packages.
    """

    assets: list[dict] = field(default_factory=list)
    blocks: dict[str, Any] = field(default_factory=dict)
    tensors: list[dict] = field(default_factory=list)
    coreml: list[dict] = field(default_factory=list)


# -- writing ----------------------------------------------------------------------------


def gaussian_settings(sh_degree: int, rasterize_mode: str, eps2d: float | None = None) -> dict:
    """The manifest's ``gaussians`` block: ``rasterize_gaussians``' defaults and rules
    (``eps2d`` the model's blur where it sets one)."""
    import inspect

    from snap3d.render import rasterize_gaussians

    defaults = inspect.signature(rasterize_gaussians).parameters
    settings = {k: defaults[k].default for k in ("eps2d", "near_plane", "far_plane")}
    if eps2d is not None:
        settings["eps2d"] = float(eps2d)
    return {
        "sh_degree": sh_degree,
        "rasterize_mode": rasterize_mode,
        **settings,
        **GAUSSIAN_RULES,
    }


def write_spz(folder: Path, name: str, splats, role: str, description: str) -> dict:
    """Write ``splats`` (SplatData) as SPZ v3 in Morton order, RUB axes; its asset entry."""
    from snap3d.io import save_spz

    splats = splats.select(splats.morton_order())
    save_spz(folder / name, splats, version=3, axes="RUB")
    return {
        "path": name,
        "role": role,
        "format": "spz",
        "description": description,
        "spz": {
            "version": 3,
            "axes": "RUB",
            "to_world": [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]],
            "order": "morton",
            "count": splats.num,
            "sh_degree": splats.sh_degree,
        },
    }


def write_tensors(
    folder: Path, name: str, tensors: dict[str, np.ndarray], role: str, description: str
) -> tuple[dict, list[dict]]:
    """Write tensors (keeping each array's dtype: float16 or float32) into one raw file.

    Returns:
        the asset entry and the layout entries (name, asset, dtype, shape, offset, bytes).
    """
    layout, offset = [], 0
    with atomic_write(folder / name) as f:
        for key, array in tensors.items():
            dtype = next((k for k, v in DTYPES.items() if v == array.dtype.newbyteorder("<")), None)
            if dtype is None:
                raise Snap3dError(f"tensor {key!r} is {array.dtype}; bundles hold float16/32")
            data = np.ascontiguousarray(array, DTYPES[dtype]).tobytes()
            pad = -offset % ALIGNMENT
            f.write(b"\0" * pad)
            offset += pad
            layout.append(
                {
                    "name": key,
                    "asset": name,
                    "dtype": dtype,
                    "shape": list(array.shape),
                    "offset": offset,
                    "bytes": len(data),
                }
            )
            f.write(data)
            offset += len(data)
    asset = {"path": name, "role": role, "format": "raw", "description": description}
    return asset, layout


def float32_list(values) -> list | float:
    """Float32 values (tensor or array) as nested lists of the shortest decimals that read
    back as the same float32 numbers (JSON stays exact and short)."""
    a = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, np.float32)
    if a.ndim == 0:
        return float(str(a))
    return [float32_list(x) for x in a]


def manifest_text(manifest: dict) -> str:
    """The manifest as indented JSON with every list of numbers on one line."""

    def dump(value, indent: str) -> str:
        inner = indent + " "
        if isinstance(value, dict) and value:
            items = [f"{inner}{json.dumps(k)}: {dump(v, inner)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{indent}}}"
        if (
            isinstance(value, list)
            and value
            and not all(isinstance(v, (int, float)) for v in value)
        ):
            return "[\n" + ",\n".join(inner + dump(v, inner) for v in value) + f"\n{indent}]"
        return json.dumps(value)

    return dump(manifest, "") + "\n"


def _camera_entries(cameras) -> list[dict]:
    out = []
    for i in range(len(cameras)):
        fx, fy, cx, cy = float32_list(cameras.Ks[i][[0, 1, 0, 1], [0, 1, 2, 2]])
        entry = {
            "camtoworld": float32_list(cameras.camtoworlds[i]),
            "fx": fx,
            "fy": fy,
            "cx": cx,
            "cy": cy,
            "width": cameras.width,
            "height": cameras.height,
            "camera_model": cameras.camera_model,
        }
        if cameras.distortion is not None:
            entry["distortion"] = float32_list(cameras.distortion[i])
        out.append(entry)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe(root: Path, asset: dict) -> dict:
    """The asset entry with its byte size and sha256 (each file's, for a folder)."""
    path = root / asset["path"]
    if path.is_dir():
        files = [
            {
                "path": p.relative_to(root).as_posix(),
                "bytes": p.stat().st_size,
                "sha256": _sha256(p),
            }
            for p in sorted(path.rglob("*"))
            if p.is_file()
        ]
        return {**asset, "bytes": sum(f["bytes"] for f in files), "files": files}
    return {**asset, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def representation_of(method: str, model) -> str:
    """The bundle representation for a run of ``method``."""
    if method in ("lpgs", "lightslab"):
        return method
    if getattr(model.scene, "time_range", None) is not None:
        raise Snap3dError(f"{method} runs are dynamic; iPhone bundles hold static scenes")
    if method == "splat" or hasattr(model, "to_splats"):
        return "splat"
    raise Snap3dError(
        f"no iPhone bundle for {method} runs (bundles hold {', '.join(REPRESENTATIONS)})"
    )


def _baker(representation: str):
    """``bake(model, folder, quantize, include_ply, sh_degree) -> Baked`` of a representation."""
    import importlib

    return importlib.import_module(f"snap3d.mobile.bake_{representation}").bake


def _manifest(model, cfg: dict, step: int, run_dir: Path, cameras, baked: Baked) -> dict:
    from snap3d.render.paths import orbit_path, world_up

    scene = cfg["scene"]
    bounds = [[float(x) for x in corner] for corner in scene["bounds"]]
    manifest = {
        "format": "snap3d-bundle",
        "format_version": FORMAT_VERSION,
        "generator": {"name": "snap3d", "version": __version__},
        "source": {"method": cfg["method"], "step": step, "run": run_dir.name},
        "representation": representation_of(cfg["method"], model),
        "coordinates": {
            "world": "right-handed world frame of the training data, unchanged",
            "handedness": "right",
            "up": float32_list(world_up(cameras)),
            "camera": "opencv",
            "camera_axes": "x right, y down, z forward; camtoworld maps camera to world coordinates",
            "matrices": "row-major",
            "pixel_center": 0.5,
        },
        "units": {
            "length": "scene units of the training data (camera positions' units)",
            "meters_per_unit": None,
            "angle": "radian",
            "intrinsics": "pixel",
            "color": "sRGB-encoded values in [0, 1], straight (not premultiplied) alpha",
        },
        "scene": {
            "bounds": bounds,
            "center": [(lo + hi) / 2 for lo, hi in zip(*bounds, strict=True)],
        },
        "cameras": {
            "default": _camera_entries(orbit_path(cameras, 1))[0],
            "training": _camera_entries(cameras),
        },
        "render": {
            "background": [float(c) for c in scene["background"]],
            "width": int(scene["width"] or cameras.width),
            "height": int(scene["height"] or cameras.height),
        },
        **baked.blocks,
    }
    if baked.tensors:
        manifest["tensors"] = baked.tensors
    if baked.coreml:
        manifest["coreml"] = baked.coreml
    return manifest


def _write_zip(folder: Path, zip_path: Path) -> None:
    """Zip the bundle's files at the zip's root (manifest first), deterministically."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name != MANIFEST_NAME)
    with atomic_write(zip_path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        for p in files:
            info = zipfile.ZipInfo(
                p.relative_to(folder).as_posix(), date_time=(1980, 1, 1, 0, 0, 0)
            )
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, p.read_bytes())


def export_bundle(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    zip: bool = False,
    quantize: str = "none",
    include_ply: bool = False,
    sh_degree: int | None = None,
) -> Path:
    """Bake a trained run into an iPhone bundle folder ``out`` (``NAME.snap3d``).

    Args:
        run_dir: a run directory (``snap3d train`` output) of splat, lpgs or lightslab
            (or another static method with ``to_splats``, bundled as splats).
        out: the bundle folder to create or replace.
        zip: also write ``out`` + ``.zip`` with the same files.
        quantize: Core ML weights: ``"none"`` (float16), ``"int8"`` (linear, per output
            channel) or ``"palettize"`` (k-means lookup table); lpgs and lightslab only.
        include_ply: splat bundles: also ship the lossless PLY.
        sh_degree: splat bundles: ship SH up to this degree (default: the model's).

    Returns:
        ``out``. A bundle already there is replaced; any other file or non-empty folder is
        refused. If the export fails, nothing is left at ``out`` (a bundle that was there
        stays as it was) and no zip is written.
    """
    from snap3d.render.video import load_train_cameras
    from snap3d.train import load_model

    run_dir, out = Path(run_dir), Path(out)
    if quantize not in QUANTIZE:
        raise Snap3dError(f"quantize must be one of {', '.join(QUANTIZE)}, not {quantize!r}")
    model, cfg, step = load_model(run_dir, "cpu")
    rep = representation_of(cfg["method"], model)
    if rep == "splat" and quantize != "none":
        raise Snap3dError(
            "splat bundles hold no Core ML network to quantize (SPZ is already 8-bit)"
        )
    cameras = load_train_cameras(run_dir)
    if out.exists() and not (
        out.is_dir() and ((out / MANIFEST_NAME).is_file() or not any(out.iterdir()))
    ):
        raise Snap3dError("exists and is not a bundle: refusing to replace it", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    zip_path = out.with_name(out.name + ".zip") if zip else None
    wrote_zip = False
    try:
        with atomic_dir(out) as tmp:
            baked = _baker(rep)(
                model, tmp, quantize=quantize, include_ply=include_ply, sh_degree=sh_degree
            )
            manifest = _manifest(model, cfg, step, run_dir, cameras, baked)
            manifest["assets"] = [_describe(tmp, a) for a in baked.assets]
            problems = _schema_problems(manifest)
            if problems:  # a bug of ours: never write a manifest readers would refuse
                raise Snap3dError("the manifest breaks its schema: " + "; ".join(problems))
            (tmp / MANIFEST_NAME).write_text(manifest_text(manifest))
            if zip_path is not None:
                _write_zip(tmp, zip_path)
                wrote_zip = True
    except BaseException:
        if wrote_zip:
            zip_path.unlink(missing_ok=True)
        raise
    return out


# -- reading and validation -------------------------------------------------------------


class _Source:
    """Files of a bundle folder or zip, by bundle-relative path."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = None
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as e:
                raise Snap3dError(f"not a bundle folder or zip ({e})", path) from None
            self.names = {i.filename: i for i in self.zip.infolist() if not i.is_dir()}
        elif not path.is_dir():
            raise Snap3dError("bundle not found", path)

    def display(self, rel: str) -> str:
        return f"{self.path}!/{rel}" if self.zip else str(self.path / rel)

    def size(self, rel: str) -> int | None:
        if self.zip:
            info = self.names.get(rel)
            return None if info is None else info.file_size
        p = self.path / rel
        return p.stat().st_size if p.is_file() else None

    def open(self, rel: str):
        return self.zip.open(rel) if self.zip else open(self.path / rel, "rb")

    def read(self, rel: str) -> bytes:
        with self.open(rel) as f:
            return f.read()

    def sha256(self, rel: str) -> str:
        digest = hashlib.sha256()
        with self.open(rel) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def files(self) -> list[str]:
        if self.zip:
            return sorted(self.names)
        return sorted(
            p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()
        )

    def is_folder(self, rel: str) -> bool:
        if self.zip:
            return any(n.startswith(rel.rstrip("/") + "/") for n in self.names)
        return (self.path / rel).is_dir()


def _parse_manifest(source: _Source) -> dict:
    if source.size(MANIFEST_NAME) is None:
        raise Snap3dError("not a bundle: manifest.json is missing", source.display(MANIFEST_NAME))
    where = source.display(MANIFEST_NAME)
    try:
        manifest = json.loads(source.read(MANIFEST_NAME).decode("utf-8"))
    except UnicodeDecodeError:
        raise Snap3dError("malformed manifest: not UTF-8 text", where) from None
    except json.JSONDecodeError as e:
        raise Snap3dError(
            f"malformed manifest: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", where
        ) from None
    if not isinstance(manifest, dict):
        raise Snap3dError("malformed manifest: not a JSON object", where)
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise Snap3dError(
            f"bundle format version {version} is newer than this snap3d reads "
            f"({FORMAT_VERSION}); update snap3d",
            where,
        )
    return manifest


def read_manifest(path: str | os.PathLike) -> dict:
    """The parsed manifest of a bundle folder or zip, without any checks."""
    return _parse_manifest(_Source(Path(path)))


def _schema_problems(manifest: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    problems = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"at {where}: {error.message}")
    return problems


def _asset_problems(source: _Source, manifest: dict) -> list[tuple[str, str]]:
    """(file, problem) for every missing, resized or modified file, and layout errors."""
    problems: list[tuple[str, str]] = []
    listed = {MANIFEST_NAME}
    sizes: dict[str, int] = {}
    for asset in manifest["assets"]:
        rel = asset["path"]
        entries = asset.get("files") or [asset]
        if "files" in asset:
            if not source.is_folder(rel):
                problems.append((source.display(rel), f"{asset['role']} asset (folder) is missing"))
                listed.update(f["path"] for f in entries)
                continue
            total = sum(f["bytes"] for f in entries)
            if total != asset["bytes"]:
                problems.append(
                    (
                        source.display(rel),
                        f"manifest lists {total} bytes of files, says {asset['bytes']}",
                    )
                )
            outside = [
                f["path"] for f in entries if not f["path"].startswith(rel.rstrip("/") + "/")
            ]
            for p in outside:
                problems.append((source.display(p), f"listed as part of {rel} but lies outside it"))
        for entry in entries:
            path = entry["path"]
            listed.add(path)
            size = source.size(path)
            if size is None:
                problems.append((source.display(path), f"{asset['role']} asset is missing"))
                continue
            sizes[path] = size
            if size != entry["bytes"]:
                hint = " (truncated)" if size < entry["bytes"] else ""
                problems.append(
                    (
                        source.display(path),
                        f"is {size} bytes; the manifest says {entry['bytes']}{hint}",
                    )
                )
            elif source.sha256(path) != entry["sha256"]:
                problems.append(
                    (
                        source.display(path),
                        "checksum mismatch: its sha256 is not the manifest's; "
                        "the file was modified or corrupted",
                    )
                )
    for path in source.files():
        if path not in listed and not PurePosixPath(path).name.startswith("."):
            problems.append((source.display(path), "is not listed in the manifest"))
    raw = {a["path"] for a in manifest["assets"] if a["format"] == "raw"}
    for t in manifest.get("tensors", []):
        where = source.display(t["asset"])
        if t["asset"] not in raw:
            problems.append((where, f"tensor {t['name']!r} lies in an asset that is not raw"))
            continue
        expected = int(np.prod(t["shape"], dtype=np.int64)) * DTYPES[t["dtype"]].itemsize
        if expected != t["bytes"]:
            problems.append(
                (
                    where,
                    f"tensor {t['name']!r}: shape and dtype make {expected} bytes, layout says {t['bytes']}",
                )
            )
        elif t["asset"] in sizes and t["offset"] + t["bytes"] > sizes[t["asset"]]:
            problems.append((where, f"tensor {t['name']!r} ends past the end of the file"))
    packages = {a["path"] for a in manifest["assets"] if a["format"] == "mlpackage"}
    for c in manifest.get("coreml", []):
        if c["asset"] not in packages:
            problems.append((source.display(c["asset"]), "Core ML entry names no .mlpackage asset"))
    return problems


def validate(path: str | os.PathLike) -> dict:
    """Check a bundle folder or zip: manifest schema, every asset's presence, size and sha256.

    Returns:
        the manifest.

    Raises:
        Snap3dError: naming the file at fault (the manifest, or an asset) with what is wrong;
            several problems are listed together, one per line.
    """
    source = _Source(Path(path))
    manifest = _parse_manifest(source)
    where = source.display(MANIFEST_NAME)
    problems = _schema_problems(manifest)
    if problems:
        raise Snap3dError("manifest breaks the bundle schema:\n  " + "\n  ".join(problems), where)
    found = _asset_problems(source, manifest)
    if len(found) == 1:
        raise Snap3dError(found[0][1], found[0][0])
    if found:
        lines = "\n  ".join(f"{p}: {text}" for p, text in found)
        raise Snap3dError(f"{len(found)} problems:\n  {lines}", source.path)
    return manifest


def read_tensors(bundle) -> dict[str, np.ndarray]:
    """Every tensor in the manifest's layout (numpy, their stored dtype and shape).

    Args:
        bundle: a `snap3d.mobile.reference.Bundle` (folder and manifest).
    """
    out = {}
    cache: dict[str, bytes] = {}
    for t in bundle.manifest.get("tensors", []):
        if t["asset"] not in cache:
            path = bundle.root / t["asset"]
            try:
                cache[t["asset"]] = path.read_bytes()
            except OSError as e:
                raise Snap3dError(f"cannot read tensors: {e.strerror}", path) from None
        data = cache[t["asset"]]
        if t["offset"] + t["bytes"] > len(data):
            raise Snap3dError(
                f"tensor {t['name']!r} ends past the end of the file", bundle.root / t["asset"]
            )
        array = np.frombuffer(
            data,
            DTYPES[t["dtype"]],
            count=t["bytes"] // DTYPES[t["dtype"]].itemsize,
            offset=t["offset"],
        )
        out[t["name"]] = array.reshape(t["shape"])
    return out


def bundle_summary(manifest: dict) -> str:
    """One line: representation, asset count and total size."""
    total = sum(a["bytes"] for a in manifest["assets"])
    roles = ", ".join(f"{a['path']} ({a['bytes']:,} B)" for a in manifest["assets"])
    return f"{manifest['representation']} bundle, {total:,} bytes: {roles}"


def validate_command(args) -> None:
    """``snap3d bundle validate PATH``: print a summary, or raise Snap3dError."""
    manifest = validate(args.path)
    print(f"ok: {args.path}: {bundle_summary(manifest)}")
