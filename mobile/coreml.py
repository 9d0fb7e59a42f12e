"""Core ML packages of the bundled networks: conversion and inspection (coremltools).

`convert` traces a `snap3d.mobile.reference` module (the very module the reference
renderer runs) and converts it to an ML program for iOS 17 or later, with float32 inputs
and outputs of flexible batch size. Operations that read the network's weights (linear
layers, their ReLUs, texel gathers from feature planes, the child embedding's add) run in
float16 with float16 weights; geometry (ray-plane intersections, texel indices, child
positions) stays float32, where float16 would misplace texels and children. Optionally
the weights are then compressed: ``int8`` (linear symmetric, per output channel) or
``palettize`` (a k-means lookup table of ``2^PALETTE_BITS`` values per tensor, for
tensors that are not the weights of linear layers: feature planes, tables).

On Linux coremltools converts and saves but cannot run a model (prediction is macOS
only), so what is checked here is the saved package itself: `package_io` reads the
declared inputs and outputs back from its spec, and `package_weights` reads its weight
constants (dequantizing compressed ones), which the bundle's raw float16 tensors and the
trained weights are compared with.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from snap3d.mobile.reference import buffer_name
from torch import Tensor, nn

from snap3d.errors import Snap3dError

__all__ = [
    "PALETTE_BITS",
    "convert",
    "dequantized_weights",
    "package_io",
    "package_weights",
    "weight_storage",
]

#: Bits per palettized weight (a 64-entry lookup table per tensor).
PALETTE_BITS = 6
#: Only tensors with more elements than this are compressed (not biases, not geometry).
COMPRESS_ABOVE = 256
#: Flexible batch dimensions accept 1 to this many rows.
MAX_BATCH = 1 << 22
_FLOAT16_OPS = ("linear", "matmul", "relu")
_DTYPE_NAMES = {"FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32"}
# Suffixes coremltools appends to a constant's name when it casts or compresses it.
_SUFFIXES = ("_quantized", "_palettized", "_to_fp16", "_to_fp32")


def coremltools():
    """Import coremltools without its warnings about untested torch and scikit-learn
    versions and its missing prediction library on Linux."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger = logging.getLogger("coremltools")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            import coremltools as ct
        except ImportError as e:
            raise Snap3dError(
                f"Core ML export needs coremltools: pip install 'snap3d[mobile]' ({e})"
            ) from None
        finally:
            logger.setLevel(level)
    return ct


@contextlib.contextmanager
def _quiet():
    """Silence coremltools' progress bars and chatter (stderr, warnings) for a block."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _weight_selector(weight_names: set[str]):
    """Ops that run in float16: the ones of ``_FLOAT16_OPS`` and any op reading a weight."""

    def select(op) -> bool:
        if op.op_type in _FLOAT16_OPS:
            return True
        for value in op.inputs.values():
            for var in value if isinstance(value, (list, tuple)) else (value,):
                producer = getattr(var, "op", None)
                if (
                    producer is not None
                    and producer.op_type == "const"
                    and var.name in weight_names
                ):
                    return True
        return False

    return select


def _tensor_type(ct, feature: dict, example: Tensor | None):
    shape = None
    if example is not None:
        shape = tuple(
            ct.RangeDim(*feature.get("range", (1, MAX_BATCH)), default=int(example.shape[d]))
            if n == -1
            else n
            for d, n in enumerate(feature["shape"])
        )
    return ct.TensorType(name=feature["name"], shape=shape, dtype=np.float32)


def convert(
    module: nn.Module,
    examples: tuple[Tensor, ...],
    inputs: list[dict],
    outputs: list[dict],
    weights: list[str],
    path: str | os.PathLike,
    quantize: str = "none",
    description: str = "",
) -> dict:
    """Convert ``module`` to an ML program and save it as an ``.mlpackage`` folder.

    Args:
        module: a module whose weights are buffers named ``buffer_name(tensor name)``.
        examples: example inputs for tracing (flexible dimensions should differ from the
            fixed ones, so that tracing cannot mistake one for the other).
        inputs, outputs: manifest features ({name, dtype float32, shape with -1 for a
            flexible dimension, optional range [min, max], description}).
        weights: layout names of the network weights (float16; compressed by ``quantize``).
        path: the ``.mlpackage`` to write.
        quantize: ``"none"``, ``"int8"`` or ``"palettize"``.
        description: the model's short description.

    Returns:
        the manifest's ``coreml`` entry (``asset`` relative to the package's folder).
    """
    ct = coremltools()
    import coremltools.optimize.coreml as cto

    traced = torch.jit.trace(module.eval(), examples, check_trace=False)
    selector = _weight_selector({buffer_name(w) for w in weights})
    with _quiet():
        model = ct.convert(
            traced,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS17,
            inputs=[_tensor_type(ct, f, e) for f, e in zip(inputs, examples, strict=True)],
            outputs=[_tensor_type(ct, f, None) for f in outputs],
            compute_precision=ct.transform.FP16ComputePrecision(op_selector=selector),
        )
        if quantize == "int8":
            op = cto.OpLinearQuantizerConfig(
                mode="linear_symmetric",
                dtype="int8",
                granularity="per_channel",
                weight_threshold=COMPRESS_ABOVE,
            )
            model = cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=op))
        elif quantize == "palettize":
            op = cto.OpPalettizerConfig(
                mode="kmeans",
                nbits=PALETTE_BITS,
                granularity="per_tensor",
                weight_threshold=COMPRESS_ABOVE,
            )
            # decoder layers stay float16: a 64-entry table per small matrix costs more
            # quality (several dB on the light slab's 32-wide decoder) than it saves bytes
            config = cto.OptimizationConfig(global_config=op, op_type_configs={"linear": None})
            model = cto.palettize_weights(model, config)
        elif quantize != "none":
            raise Snap3dError(f"quantize must be none, int8 or palettize, not {quantize!r}")
    model.short_description = description
    for f in inputs:
        model.input_description[f["name"]] = f.get("description", "")
    for f in outputs:
        model.output_description[f["name"]] = f.get("description", "")
    with _quiet():
        model.save(str(path))
    return {
        "asset": Path(path).name,
        "minimum_deployment_target": "iOS17",
        "compute_precision": "float16 for weight operations (linear, relu, plane gathers), "
        "float32 for geometry",
        "weights": "float16" if quantize == "none" else quantize,
        "inputs": inputs,
        "outputs": outputs,
    }


def _load(path: Path):
    ct = coremltools()
    if not (path / "Manifest.json").is_file():
        raise Snap3dError("not an .mlpackage (no Manifest.json)", path)
    with _quiet():
        try:
            model = ct.models.MLModel(str(path), skip_model_load=True)
        except Exception as e:  # coremltools raises bare exceptions for corrupt packages
            raise Snap3dError(f"cannot read the Core ML package: {e}", path) from None
    return model


def _dims(feature_type) -> list[int]:
    array = feature_type.multiArrayType
    return list(array.shape)


def package_io(path: str | os.PathLike) -> dict[str, list[dict]]:
    """Inputs and outputs a saved ``.mlpackage`` declares.

    Returns:
        {"inputs": [...], "outputs": [...]}, each feature {name, dtype, shape, range?}:
        an input's flexible dimension reads -1 with its [min, max] range; output shapes
        come from the ML program's output types (-1 where not fixed).
    """
    path = Path(path)
    spec = _load(path).get_spec()
    result: dict[str, list[dict]] = {"inputs": [], "outputs": []}
    for f in spec.description.input:
        array = f.type.multiArrayType
        shape = list(array.shape)
        entry = {"name": f.name, "dtype": _DTYPE_NAMES.get(_array_type_name(array), "?")}
        ranges = list(array.shapeRange.sizeRanges)
        if ranges:
            entry["range"] = None
            for d, r in enumerate(ranges):
                if r.lowerBound != r.upperBound:
                    shape[d] = -1
                    entry["range"] = [int(r.lowerBound), int(r.upperBound)]
            if entry["range"] is None:
                del entry["range"]
        entry["shape"] = shape
        result["inputs"].append(entry)
    program_types = _program_output_types(spec)
    for f in spec.description.output:
        array = f.type.multiArrayType
        result["outputs"].append(
            {
                "name": f.name,
                "dtype": _DTYPE_NAMES.get(_array_type_name(array), "?"),
                "shape": program_types.get(f.name, list(array.shape)),
            }
        )
    return result


def _array_type_name(array) -> str:
    return type(array).ArrayDataType.Name(array.dataType)


def _program_output_types(spec) -> dict[str, list[int]]:
    """Shapes of the main function's outputs in the ML program (-1: not fixed)."""
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    wanted = set(block.outputs)
    shapes = {}
    for op in block.operations:
        for out in op.outputs:
            if out.name in wanted:
                dims = out.type.tensorType.dimensions
                shapes[out.name] = [
                    int(d.constant.size) if d.WhichOneof("dimension") == "constant" else -1
                    for d in dims
                ]
    return shapes


def _weight_ops(path: Path, names: list[str]) -> dict[str, object]:
    """{layout name: the MIL op producing its constant} of a saved package."""
    from coremltools.converters.mil.frontend.milproto.load import load

    model = _load(path)
    spec = model.get_spec()
    with _quiet():
        program = load(spec, spec.specificationVersion, model.weights_dir)
    wanted = {buffer_name(n): n for n in names}
    found = {}
    for op in program.functions["main"].operations:
        if not op.op_type.startswith(("const", "constexpr")):
            continue
        key = op.outputs[0].name
        while key.endswith(_SUFFIXES):
            key = next(key[: -len(s)] for s in _SUFFIXES if key.endswith(s))
        if key in wanted:
            found[wanted[key]] = op
    return found


def package_weights(path: str | os.PathLike, names: list[str]) -> dict[str, np.ndarray]:
    """The weights a saved ``.mlpackage`` holds, by layout tensor name.

    Compressed weights (int8, palettized) are dequantized as Core ML does (to float16).

    Args:
        names: layout names of the tensors to find (their constants are named
            ``buffer_name(name)`` plus coremltools' suffixes).

    Returns:
        {name: array as stored (float16 or float32), in the shape the program holds it};
        names without a constant are absent.
    """
    return {
        name: np.asarray(
            op.outputs[0].val if op.op_type == "const" else op.materialized_val_inference()
        )
        for name, op in _weight_ops(Path(path), names).items()
    }


def weight_storage(path: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """How a saved ``.mlpackage`` stores each weight: ``float16``, ``float32``, ``int8``
    (linear quantization) or ``palettize`` (lookup table)."""
    kinds = {"constexpr_affine_dequantize": "int8", "constexpr_lut_to_dense": "palettize"}
    return {
        name: kinds.get(op.op_type) or str(np.asarray(op.outputs[0].val).dtype)
        for name, op in _weight_ops(Path(path), names).items()
    }


def dequantized_weights(path: str | os.PathLike, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """The float16 values a compressed package computes with, for each of ``weights``.

    Args:
        path: a saved ``.mlpackage``.
        weights: {layout name: tensor}; gives the names and the shapes to return.

    Raises:
        Snap3dError: if the package holds no constant for one of them.
    """
    stored = package_weights(path, list(weights))
    missing = sorted(set(weights) - set(stored))
    if missing:
        raise Snap3dError(f"the Core ML package has no constants for {missing}", path)
    return {
        k: torch.from_numpy(stored[k].astype(np.float16)).view(v.shape) for k, v in weights.items()
    }
