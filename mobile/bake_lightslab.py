"""Bake a lightslab run: the float16 feature planes and MLP weights (for a Metal shader)
and the whole light field as a Core ML package (rays in, colour and alpha out).

The slab geometry (sectors, frames, plane depths, extents) goes into the manifest as
float32 numbers; the planes keep the model's layout, [C, K, rows, cols] per level and
coordinate pair. `snap3d.mobile.reference.LightSlabField` documents the evaluation.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from snap3d.mobile.bundle import Baked, float32_list, write_tensors
from snap3d.mobile.reference import PAIR_NAMES, PAIRS, LightSlabField
from torch import Tensor, nn

from snap3d.errors import Snap3dError

EQUATIONS = [
    "view = normalize(o - scene_centre) (sector_by origin) or normalize(-d) (direction)",
    "k = argmax_j dot(view, sectors[j])",
    "o' = rotations[k] (o - origins[k]); d' = rotations[k] d",
    "valid = d'_z > min_cos |d'|",
    "(u, v) = o'_xy + (depths[k][0] - o'_z) / d'_z d'_xy; (s, t) likewise with depths[k][1]",
    "x = (clamp(((u, v, s, t) - centers[k]) / half_extents[k], -1, 1) + 1) / 2; 0.5 where not valid",
    "level l, pair p = (a, b): bilinear sample of planes.{6 l + p}[:, k] ([C, R_a, R_b]) at "
    "row x_a (R_a - 1), column x_b (R_b - 1), texel centres at integer coordinates",
    "features: concat over levels, pairs, channels (combine concat) or, per level, the "
    "product over the six pairs, then concat over levels (combine product)",
    "r = mlp(features): linear layers, relu between them",
    "colour = sigmoid(r[0:3]); alpha = valid sigmoid(r[3]) (outputs rgba) or valid (rgb)",
    "pixel = alpha colour + (1 - alpha) background",
]


def _min_cos(model) -> float:
    """The grazing-ray threshold of the model's ray-slab intersection (its default)."""
    from snap3d.representations.lightslab import ray_to_slab

    return float(inspect.signature(ray_to_slab).parameters["min_cos"].default)


@torch.no_grad()
def lightslab_parts(model) -> tuple[dict, dict[str, Tensor]]:
    """The manifest's ``lightslab`` block and the network weights of a trained light-slab
    model (float32, CPU), read through its public attributes."""
    cfg = model.config
    if cfg.decoder != "mlp":
        raise Snap3dError(
            "lightslab bundles hold the per-ray mlp decoder; this run uses the conv decoder, "
            "which iPhone bundles do not support yet"
        )
    slabs = model.slabs
    weights: dict[str, Tensor] = {}
    for level in range(len(model.resolutions)):
        for pair in range(len(PAIRS)):
            # [K,C,rows,cols] -> [C,K,rows,cols], the model's storage order
            weights[f"planes.{level * 6 + pair}"] = model.plane(level, pair).transpose(0, 1)
    mlp = []
    linear = [(i, m) for i, m in enumerate(model.mlp) if isinstance(m, nn.Linear)]
    for n, (i, layer) in enumerate(linear):
        weights[f"mlp.{i}.weight"] = layer.weight
        weights[f"mlp.{i}.bias"] = layer.bias
        mlp.append(
            {
                "weight": f"mlp.{i}.weight",
                "bias": f"mlp.{i}.bias",
                "shape": list(layer.weight.shape),
                "activation": "relu" if n < len(linear) - 1 else "none",
            }
        )

    spec = {
        "num_slabs": model.num_slabs,
        "sector_by": cfg.sector_by,
        "min_cos": _min_cos(model),
        "scene_centre": float32_list(model.scene_centre),
        "sectors": float32_list(model.sector_directions),
        "rotations": float32_list(slabs.rotations),
        "origins": float32_list(slabs.origins),
        "depths": float32_list(slabs.depths),
        "centers": float32_list(slabs.centers),
        "half_extents": float32_list(slabs.half_extents),
        "feature_dim": cfg.feature_dim,
        "pairs": list(PAIR_NAMES),
        "resolutions": [list(r) for r in model.resolutions],
        "combine": cfg.combine,
        "mlp": mlp,
        "outputs": "rgba" if model.scene.has_alpha else "rgb",
        "equations": EQUATIONS,
    }
    return spec, {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}


def bake(
    model,
    folder: Path,
    quantize: str = "none",
    include_ply: bool = False,
    sh_degree: int | None = None,
) -> Baked:
    """Write planes.bin, decoder.bin and lightslab.mlpackage."""
    from snap3d.mobile.coreml import convert, dequantized_weights

    if include_ply or sh_degree is not None:
        raise Snap3dError("lightslab bundles hold no splats (no PLY, no SH degree to choose)")
    spec, weights = lightslab_parts(model)
    shipped = {k: v.half() for k, v in weights.items()}
    field = LightSlabField(spec, {k: v.float() for k, v in shipped.items()})
    inputs = [
        {"name": "origins", "dtype": "float32", "shape": [-1, 3], "range": [1, 1 << 22],
         "description": "ray origins, world"},
        {"name": "directions", "dtype": "float32", "shape": [-1, 3], "range": [1, 1 << 22],
         "description": "ray directions, world (any length)"},
    ]  # fmt: skip
    outputs = [
        {"name": "color", "dtype": "float32", "shape": [-1, 3],
         "description": "sRGB colour in [0, 1], before compositing over the background"},
        {"name": "alpha", "dtype": "float32", "shape": [-1, 1], "description": "coverage in [0, 1]"},
    ]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    m = 37  # example ray count unlike every fixed size
    directions = torch.nn.functional.normalize(torch.randn(m, 3, generator=g), dim=-1)
    examples = (field.scene_centre - 3 * directions, directions)
    package = folder / "lightslab.mlpackage"
    coreml = convert(
        field,
        examples,
        inputs,
        outputs,
        list(weights),
        package,
        quantize,
        "light-slab light field: rays -> colour and alpha",
    )
    if quantize != "none":
        # ship the dequantized weights: every decoder on the phone then runs the same numbers
        shipped = dequantized_weights(package, shipped)
    suffix = "" if quantize == "none" else f" (the {quantize} Core ML weights, dequantized)"
    planes_asset, planes_layout = write_tensors(
        folder,
        "planes.bin",
        {k: v.numpy() for k, v in shipped.items() if k.startswith("planes.")},
        "planes",
        "feature planes [C, K, rows, cols] per level and pair, float16" + suffix,
    )
    mlp_asset, mlp_layout = write_tensors(
        folder,
        "decoder.bin",
        {k: v.numpy() for k, v in shipped.items() if k.startswith("mlp.")},
        "decoder-weights",
        "MLP weights [out, in] and biases, float16" + suffix,
    )
    package_asset = {
        "path": package.name,
        "role": "coreml",
        "format": "mlpackage",
        "description": "Core ML light field (inputs and outputs under coreml)",
    }
    return Baked(
        assets=[planes_asset, mlp_asset, package_asset],
        blocks={"lightslab": spec},
        tensors=planes_layout + mlp_layout,
        coreml=[coreml],
    )
