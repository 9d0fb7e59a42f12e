"""Assigning screen-space Gaussians to image tiles, sorted front to back per tile."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class TileBins(NamedTuple):
    """Gaussian-tile intersections, laid out as gsplat's ``isect_tiles`` output.

    Attributes:
        tile_width: number of tile columns.
        tile_height: number of tile rows.
        tiles_per_gauss: number of tiles each Gaussian touches. [C, N] int32
        isect_ids: sort keys ``camera | tile | float32 depth bits``, ascending. [M] int64
        flatten_ids: index ``camera * N + gaussian`` of each intersection. [M] int32
        isect_offsets: first intersection of each tile; a tile ends where the next one
            (in camera-major, row-major order) starts, the last at ``M``. [C, tile_height, tile_width] int32
    """

    tile_width: int
    tile_height: int
    tiles_per_gauss: Tensor
    isect_ids: Tensor
    flatten_ids: Tensor
    isect_offsets: Tensor


@torch.no_grad()
def bin_gaussians(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int
) -> TileBins:
    """List, for every tile, the Gaussians whose bounding box touches it, nearest first.

    Ties in depth keep the Gaussian order, as gsplat's stable radix sort does.

    Args:
        means2d: projected centres in pixels. [C, N, 2]
        radii: bounding-box half-extents in pixels, 0 for culled Gaussians. [C, N, 2] int32
        depths: camera-space depths. [C, N]
        width: image width in pixels.
        height: image height in pixels.
        tile_size: tile side in pixels.

    Returns:
        the intersections, see :class:`TileBins`.
    """
    C, N = depths.shape
    device = depths.device
    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tile_width * tile_height
    tile_bits = n_tiles.bit_length()
    if C.bit_length() + tile_bits + 32 > 64:
        raise ValueError(f"too many cameras ({C}) and tiles ({n_tiles}) for 64-bit sort keys")

    centre = means2d / tile_size
    extent = radii / tile_size
    limit = torch.tensor([tile_width, tile_height], device=device)
    lo = torch.minimum(torch.floor(centre - extent).clamp_min(0).long(), limit)  # [C, N, 2]
    hi = torch.minimum(torch.ceil(centre + extent).clamp_min(0).long(), limit)
    span = hi - lo
    counts = span[..., 0] * span[..., 1] * (radii > 0).all(dim=-1)  # [C, N]

    counts_flat = counts.flatten()
    gauss = torch.repeat_interleave(torch.arange(C * N, device=device), counts_flat)  # [M]
    first = torch.cumsum(counts_flat, 0) - counts_flat
    rank = torch.arange(gauss.numel(), device=device) - first[gauss]
    cols = span.reshape(-1, 2)[gauss, 0]
    lo_g = lo.reshape(-1, 2)[gauss]
    tile_ids = (lo_g[:, 1] + rank // cols) * tile_width + lo_g[:, 0] + rank % cols
    camera_ids = gauss // N
    depth_bits = depths.detach().float().contiguous().view(torch.int32).flatten()[gauss]
    isect_ids = (
        (camera_ids << (32 + tile_bits)) | (tile_ids << 32) | (depth_bits.long() & 0xFFFFFFFF)
    )
    isect_ids, order = torch.sort(isect_ids, stable=True)
    flatten_ids = gauss[order].int()

    per_tile = torch.bincount(camera_ids * n_tiles + tile_ids, minlength=C * n_tiles)
    offsets = (torch.cumsum(per_tile, 0) - per_tile).int().reshape(C, tile_height, tile_width)
    return TileBins(tile_width, tile_height, counts.int(), isect_ids, flatten_ids, offsets)
