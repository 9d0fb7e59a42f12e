"""Bake an lpgs run: compact parents, the child decoder's weights and Core ML package, and
the expanded children as an SPZ fallback.

The hash grid is evaluated once, at the parents (their positions are fixed after
training), so the bundle ships each parent's decoder input (its hash-grid feature followed
by its own stored features) instead of the hash tables: the phone's decoder is the MLP
alone (`snap3d.mobile.reference.ChildDecoder`), taking parent features, means, log sizes
and opacities to children.
"""

from __future__ import annotations

from pathlib import Path

import torch
from snap3d.mobile.bundle import (
    Baked,
    float32_list,
    gaussian_settings,
    write_spz,
    write_tensors,
)
from snap3d.mobile.reference import ChildDecoder
from torch import Tensor

from snap3d.errors import Snap3dError

EQUATIONS = [
    "f, m, s, a: the parent's decoder input (its hash-grid feature, then its own features), "
    "mean, log size, opacity logit (parents.features, parents.means, parents.log_sizes, "
    "parents.opacities); k: the child",
    "h = relu(input_layer.weight f + input_layer.bias)",
    "h = relu(hidden.i.weight h + hidden.i.bias), i = 0 .. hidden_layers - 1",
    "h = relu(h + child_embedding[k])",
    "o = head.weight h + head.bias",
    "mean = m + exp(s) (pattern[k] + offset_range tanh(o[0:3]))",
    "scale = exp(s + o[3:6])",
    "quat (w, x, y, z) = normalize(o[6:10] + (1, 0, 0, 0))",
    "opacity = sigmoid(a + o[10])",
    "sh = o[11:] as [(sh_degree + 1)^2, 3], DC first, colour channel fastest",
]


@torch.no_grad()
def lpgs_parts(model) -> tuple[dict, dict[str, Tensor], dict[str, Tensor]]:
    """The manifest's ``lpgs`` block, the parents and the decoder weights of a trained
    LPGS model (float32, CPU), read through its public attributes."""
    cfg = model.config
    means = model.parents["means"].detach().float().cpu()
    log_sizes = model.parents["scales"].detach().float().cpu()
    opacities = model.parents["opacities"].detach().float().cpu()
    # the MLP's input per parent: its hash-grid feature, then its own stored features
    own = [model.parents["features"].detach().float().cpu()] if "features" in model.parents else []
    features = torch.cat([model.hash(model.normalized(means)).float(), *own], -1)
    weights = {
        "input_layer.weight": model.input_layer.weight,
        "input_layer.bias": model.input_layer.bias,
        "child_embedding": model.child_embedding,
    }
    for i, layer in enumerate(model.hidden):
        weights[f"hidden.{i}.weight"] = layer.weight
        weights[f"hidden.{i}.bias"] = layer.bias
    weights["head.weight"] = model.head.weight
    weights["head.bias"] = model.head.bias
    spec = {
        "children": cfg.children,
        "sh_degree": cfg.sh_degree,
        "feature_dim": features.shape[1],
        "hidden_dim": model.input_layer.out_features,
        "hidden_layers": len(model.hidden),
        "offset_range": float(cfg.offset_range),
        "pattern": float32_list(model.pattern),
        "parents": means.shape[0],
        "equations": EQUATIONS,
    }
    parents = {
        "parents.means": means,
        "parents.log_sizes": log_sizes,
        "parents.opacities": opacities,
        "parents.features": features,
    }
    return spec, parents, {k: v.detach().float().cpu() for k, v in weights.items()}


def _features(spec: dict) -> tuple[list[dict], list[dict]]:
    k, c, f = spec["children"], (spec["sh_degree"] + 1) ** 2, spec["feature_dim"]
    inputs = [
        {"name": "features", "dtype": "float32", "shape": [-1, f],
         "description": "per parent: hash-grid features (parents.features)"},
        {"name": "means", "dtype": "float32", "shape": [-1, 3],
         "description": "per parent: position, world (parents.means)"},
        {"name": "log_sizes", "dtype": "float32", "shape": [-1],
         "description": "per parent: log size (parents.log_sizes)"},
        {"name": "opacities", "dtype": "float32", "shape": [-1],
         "description": "per parent: opacity logit (parents.opacities)"},
    ]  # fmt: skip
    outputs = [
        {"name": "child_means", "dtype": "float32", "shape": [-1, k, 3],
         "description": "children positions, world"},
        {"name": "child_quats", "dtype": "float32", "shape": [-1, k, 4],
         "description": "unit quaternions (w, x, y, z)"},
        {"name": "child_scales", "dtype": "float32", "shape": [-1, k, 3],
         "description": "standard deviations along the rotated axes (linear)"},
        {"name": "child_opacities", "dtype": "float32", "shape": [-1, k],
         "description": "opacities in [0, 1]"},
        {"name": "child_sh", "dtype": "float32", "shape": [-1, k, c, 3],
         "description": "SH coefficients, DC first"},
    ]  # fmt: skip
    for feature in inputs:
        feature["range"] = [1, 1 << 22]
    return inputs, outputs


def bake(
    model,
    folder: Path,
    quantize: str = "none",
    include_ply: bool = False,
    sh_degree: int | None = None,
) -> Baked:
    """Write parents.bin, decoder.bin, decoder.mlpackage and fallback.spz."""
    from snap3d.mobile.coreml import convert, dequantized_weights

    if sh_degree is not None and sh_degree != model.config.sh_degree:
        raise Snap3dError("lpgs bundles keep the model's SH degree (its decoder predicts it)")
    if include_ply:
        raise Snap3dError("lpgs bundles ship no PLY; export the run with --format ply for one")
    spec, parents, weights = lpgs_parts(model)
    shipped = {k: v.half() for k, v in weights.items()}
    decoder = ChildDecoder(spec, {k: v.float() for k, v in shipped.items()})
    inputs, outputs = _features(spec)
    # an example parent count unlike every fixed size, so that tracing keeps it symbolic
    fixed = {3, 4, spec["children"], spec["feature_dim"], spec["hidden_dim"]}
    fixed |= set(shipped["head.weight"].shape) | {(spec["sh_degree"] + 1) ** 2}
    p = next(n for n in range(5, 1000) if n not in fixed)
    g = torch.Generator().manual_seed(0)
    examples = tuple(torch.randn(p, *f["shape"][1:], generator=g) for f in inputs)
    coreml = convert(
        decoder,
        examples,
        inputs,
        outputs,
        list(weights),
        folder / "decoder.mlpackage",
        quantize,
        "LPGS child decoder: parent features, means, log sizes, opacities -> children",
    )
    if quantize != "none":
        # ship the dequantized weights: every decoder on the phone then runs the same numbers
        shipped = dequantized_weights(folder / "decoder.mlpackage", shipped)
    parents_asset, parents_layout = write_tensors(
        folder,
        "parents.bin",
        {k: (v.half() if k == "parents.features" else v).numpy() for k, v in parents.items()},
        "parents",
        f"{spec['parents']} parents: means, log sizes, opacity logits float32, features float16",
    )
    weights_asset, weights_layout = write_tensors(
        folder,
        "decoder.bin",
        {k: v.numpy() for k, v in shipped.items()},
        "decoder-weights",
        "child decoder weights, float16"
        + ("" if quantize == "none" else f" (the {quantize} Core ML weights, dequantized)"),
    )
    children = model.to_splats().to("cpu")
    fallback = write_spz(
        folder,
        "fallback.spz",
        children,
        "splats-fallback",
        f"the {children.num} decoded children (opacity >= 1/255) as plain splats, SPZ v3",
    )
    package = {
        "path": "decoder.mlpackage",
        "role": "coreml",
        "format": "mlpackage",
        "description": "Core ML child decoder (inputs and outputs under coreml)",
    }
    mode = getattr(model.config, "rasterize_mode", "classic")
    return Baked(
        assets=[parents_asset, weights_asset, package, fallback],
        blocks={"gaussians": gaussian_settings(spec["sh_degree"], mode), "lpgs": spec},
        tensors=parents_layout + weights_layout,
        coreml=[coreml],
    )
