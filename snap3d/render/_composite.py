"""Front-to-back alpha compositing of binned 2D Gaussians in plain PyTorch operations.

Runs on any device and is differentiable through autograd. Tiles are processed in groups
of similar list length and each list in chunks, so that no tensor is larger than a fixed
number of (pixel, Gaussian) pairs; when keeping every chunk for backward would exceed a
memory budget, chunks are recomputed during backward instead (activation checkpointing).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from snap3d.render._projection import ALPHA_THRESHOLD
from snap3d.render._tiles import TileBins

MAX_ALPHA = 0.999
# A pixel stops at the Gaussian that would bring its transmittance to or below this.
MIN_TRANSMITTANCE = 1e-4
TILES_PER_GROUP = 16
PAIRS_PER_CHUNK = 1 << 20
# Above this many (pixel, Gaussian) pairs in total, chunks are recomputed in backward.
PAIRS_KEPT_FOR_BACKWARD = 1 << 23


class _PairOffsets(torch.autograd.Function):
    """``means2d[ids] - pixels`` for every (pixel, Gaussian) pair of a chunk.

    The backward pass sums pair gradients per Gaussian and, when ``absgrad`` is a tensor,
    also adds their absolute values into it (AbsGS), which autograd alone cannot give.
    """

    @staticmethod
    def forward(ctx, means2d: Tensor, ids: Tensor, pixels: Tensor, absgrad: Tensor | None):
        # means2d [I*N, 2], ids [G, L], pixels [G, P, 2] -> [G, P, L, 2]
        ctx.save_for_backward(ids)
        ctx.n_gaussians = means2d.shape[0]
        ctx.absgrad = absgrad
        return means2d[ids][:, None, :, :] - pixels[:, :, None, :]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        flat_ids = ids.flatten()
        grad_means2d = grad.new_zeros(ctx.n_gaussians, 2)
        grad_means2d.index_add_(0, flat_ids, grad.sum(dim=1).reshape(-1, 2))
        if ctx.absgrad is not None:
            ctx.absgrad.index_add_(0, flat_ids, grad.abs().sum(dim=1).reshape(-1, 2))
        return grad_means2d, None, None, None


def _composite_chunk(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    transmittance: Tensor,
    reach: Tensor,
    ids: Tensor,
    listed: Tensor,
    pixels: Tensor,
    absgrad: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite one chunk of depth-sorted Gaussians over a group of tiles.

    Args:
        means2d, conics, colors, opacities: all Gaussians, flattened over cameras.
            [I*N, 2], [I*N, 3], [I*N, D], [I*N]
        transmittance: transmittance of each pixel before this chunk. [G, P]
        reach: transmittance had the terminating Gaussian been applied; at or below
            1e-4 once the pixel is done. [G, P]
        ids: Gaussian of each list slot. [G, L] int64
        listed: whether the slot holds a Gaussian (lists are padded). [G, L] bool
        pixels: pixel centres. [G, P, 2]
        absgrad: accumulator for absolute pixel gradients of ``means2d``, or None. [I*N, 2]

    Returns:
        colour added to each pixel [G, P, D], transmittance after the chunk [G, P] and
        the updated ``reach`` [G, P].
    """
    delta = _PairOffsets.apply(means2d, ids, pixels, absgrad)  # [G, P, L, 2]
    dx, dy = delta.unbind(-1)
    a, b, c = conics[ids][:, None].unbind(-1)  # [G, 1, L] each
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacities[ids][:, None] * torch.exp(-sigma), MAX_ALPHA)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & listed[:, None], alpha, 0)
    with torch.no_grad():
        # Transmittance only decreases, so the kept Gaussians form a prefix of each list.
        would_be = reach[..., None] * torch.cumprod(1 - alpha, dim=-1)
    alpha = torch.where(would_be > MIN_TRANSMITTANCE, alpha, 0)
    through = torch.cumprod(1 - alpha, dim=-1)  # [G, P, L]
    before = torch.cat([torch.ones_like(through[..., :1]), through[..., :-1]], dim=-1)
    weights = alpha * before * transmittance[..., None]
    added = torch.bmm(weights, colors[ids])  # [G, P, D]
    return added, transmittance * through[..., -1], would_be[..., -1]


def composite_tiles(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int,
    backgrounds: Tensor | None = None,
    absgrad: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Alpha-composite 2D Gaussians front to back, tile by tile.

    Per pixel, Gaussians are taken in the tile's depth order with
    ``alpha = min(0.999, opacity * exp(-σ))``; those with ``alpha < 1/255`` are skipped and
    the pixel stops before the Gaussian that would bring its transmittance to 1e-4 or below.

    Args:
        means2d: projected centres in pixels. [I, N, 2]
        conics: inverse 2D covariances ``(a, b, c)``. [I, N, 3]
        colors: per-image colours or features. [I, N, D]
        opacities: per-image opacities. [I, N]
        bins: the tile lists from :func:`~snap3d.render._tiles.bin_gaussians`.
        width: image width in pixels.
        height: image height in pixels.
        tile_size: tile side in pixels.
        backgrounds: colour behind the Gaussians, or None for zero. [I, D]
        absgrad: accumulator for summed absolute pixel gradients of ``means2d``, or None.
            [I, N, 2]

    Returns:
        colours [I, H, W, D] and alphas [I, H, W, 1].
    """
    n_images, N, D = colors.shape
    n_tiles = bins.tile_width * bins.tile_height
    device, dtype = colors.device, colors.dtype
    flat = (means2d.reshape(-1, 2), conics.reshape(-1, 3), colors.reshape(-1, D))
    flat_opacities = opacities.reshape(-1)
    flat_absgrad = None if absgrad is None else absgrad.view(-1, 2)

    starts = bins.isect_offsets.flatten().long()
    ends = torch.cat([starts[1:], starts.new_tensor([bins.flatten_ids.numel()])])
    counts = ends - starts
    order = torch.argsort(counts, descending=True)
    order = order[: int((counts > 0).sum())]
    sorted_counts = counts[order].tolist()

    offsets = torch.arange(tile_size, device=device, dtype=dtype) + 0.5
    tile_pixels = torch.stack(torch.meshgrid(offsets, offsets, indexing="xy"), -1).reshape(-1, 2)
    P = tile_pixels.shape[0]
    flatten_ids = bins.flatten_ids.long()
    recompute = (
        torch.is_grad_enabled()
        and any(t.requires_grad for t in (*flat, flat_opacities))
        and sum(sorted_counts) * P > PAIRS_KEPT_FOR_BACKWARD
    )

    group_colors, group_transmittance = [], []
    # When no tile is hit, one empty group still runs, so that the outputs stay in the
    # autograd graph of the inputs (and means2d.grad becomes zeros rather than None).
    for g0 in range(0, len(sorted_counts), TILES_PER_GROUP) or [0]:
        tiles = order[g0 : g0 + TILES_PER_GROUP]
        G, longest = tiles.numel(), sorted_counts[g0] if sorted_counts else 1
        tile_in_image = tiles % n_tiles
        corner = torch.stack(
            [tile_in_image % bins.tile_width, tile_in_image // bins.tile_width], -1
        )
        pixels = corner.to(dtype)[:, None, :] * tile_size + tile_pixels  # [G, P, 2]
        transmittance = torch.ones(G, P, device=device, dtype=dtype)
        reach = transmittance
        added = colors.new_zeros(G, P, D)
        chunk = max(1, PAIRS_PER_CHUNK // (max(G, 1) * P))
        for l0 in range(0, longest, chunk):
            slots = starts[tiles, None] + torch.arange(l0, min(l0 + chunk, longest), device=device)
            listed = slots < ends[tiles, None]
            ids = flatten_ids[torch.where(listed, slots, 0)]
            args = (*flat, flat_opacities, transmittance, reach, ids, listed, pixels, flat_absgrad)
            if recompute:
                part, transmittance, reach = checkpoint(
                    _composite_chunk, *args, use_reentrant=False
                )
            else:
                part, transmittance, reach = _composite_chunk(*args)
            added = added + part
            if bool((reach <= MIN_TRANSMITTANCE).all()):
                break
        group_colors.append(added)
        group_transmittance.append(transmittance)

    tile_colors = colors.new_zeros(n_images * n_tiles, P, D).index_copy(
        0, order, torch.cat(group_colors)
    )
    tile_transmittance = torch.ones(n_images * n_tiles, P, device=device, dtype=dtype).index_copy(
        0, order, torch.cat(group_transmittance)
    )
    if backgrounds is not None:
        tile_colors = tile_colors + tile_transmittance[..., None] * backgrounds.repeat_interleave(
            n_tiles, dim=0
        ).unsqueeze(1)
    images = torch.cat([tile_colors, 1 - tile_transmittance[..., None]], dim=-1)
    images = images.reshape(
        n_images, bins.tile_height, bins.tile_width, tile_size, tile_size, D + 1
    )
    images = images.permute(0, 1, 3, 2, 4, 5).reshape(
        n_images, bins.tile_height * tile_size, bins.tile_width * tile_size, D + 1
    )[:, :height, :width]
    return images[..., :D], images[..., D:]
