"""Bake a splat run: its Gaussians as SPZ v3 in Morton order (and optionally the PLY).

Morton order (``SplatData.morton_order``) puts Gaussians that are near in space near in
the file, so a Metal viewer can stream the file in spatially coherent chunks, and gzip
finds more repetition in the neighbouring positions.
"""

from __future__ import annotations

from pathlib import Path

from snap3d.mobile.bundle import Baked, gaussian_settings, write_spz

from snap3d.errors import Snap3dError
from snap3d.io import SplatData, save_ply


def reduce_sh(splats: SplatData, sh_degree: int) -> SplatData:
    """The Gaussians with SH coefficients above ``sh_degree`` dropped."""
    if not 0 <= sh_degree <= splats.sh_degree:
        raise Snap3dError(f"sh_degree must be in 0..{splats.sh_degree}, got {sh_degree}")
    k = (sh_degree + 1) ** 2 - 1
    return SplatData(
        splats.means, splats.quats, splats.scales, splats.opacities, splats.sh0, splats.shN[:, :k]
    )


def bake(
    model,
    folder: Path,
    quantize: str = "none",
    include_ply: bool = False,
    sh_degree: int | None = None,
) -> Baked:
    """Write ``scene.spz`` (and ``scene.ply``) for a model with ``to_splats``."""
    splats = model.to_splats().to("cpu")
    degree = splats.sh_degree if sh_degree is None else sh_degree
    shipped = reduce_sh(splats, degree)
    assets = [
        write_spz(
            folder,
            "scene.spz",
            shipped,
            "splats",
            f"{splats.num} Gaussians, SH degree {degree}, SPZ v3 (gzip), Morton order",
        )
    ]
    if include_ply:
        save_ply(folder / "scene.ply", splats)
        assets.append(
            {
                "path": "scene.ply",
                "role": "splats-ply",
                "format": "ply",
                "description": "the trained Gaussians, float32, Inria layout, world axes",
            }
        )
    mode = getattr(model.config, "rasterize_mode", "classic")
    settings = gaussian_settings(degree, mode, getattr(model.config, "eps2d", None))
    return Baked(assets=assets, blocks={"gaussians": settings})
