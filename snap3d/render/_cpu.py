"""The compiled CPU path: C++ projection and compositing, built on first use, wrapped in
autograd Functions with hand-written backward passes; also the light slab's inference
kernel (``lightslab_cpu.cpp``, used by ``snap3d.representations.lightslab``).

The extension is compiled with ``torch.utils.cpp_extension.load`` into torch's extension
cache the first time it is needed. If that fails, or ``SNAP3D_NO_EXT=1`` is set, callers
get None from :func:`load_extension` and use the plain PyTorch path instead; a failed
build warns once per process.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from snap3d.render._projection import Projection
from snap3d.render._tiles import TileBins

_CSRC = Path(__file__).parent / "csrc"
# name -> sources; each builds on its own, so that one failing leaves the other usable
_EXTENSIONS = {
    "snap3d_rasterize_cpu": ("project_cpu.cpp", "rasterize_cpu.cpp"),
    "snap3d_lightslab_cpu": ("lightslab_cpu.cpp",),
}
_state: dict[str, Any] = {"loaded": set(), "failed": set()}


def _build(name: str, what: str) -> bool:
    """Build and load extension ``name`` once per process; False when disabled by
    ``SNAP3D_NO_EXT=1`` or when the build failed (warned once)."""
    if os.environ.get("SNAP3D_NO_EXT", "") not in ("", "0") or name in _state["failed"]:
        return False
    if name not in _state["loaded"]:
        # at::parallel_for only spreads work over threads when built with OpenMP, which
        # Apple's clang lacks; there the extension still works, single-threaded.
        openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
        try:
            from torch.utils.cpp_extension import load

            load(
                name=name,
                sources=[str(_CSRC / source) for source in _EXTENSIONS[name]],
                extra_cflags=["-O3", "-fno-trapping-math", *openmp],
                extra_ldflags=openmp,
                is_python_module=False,
            )
        except Exception as error:  # a missing or broken compiler shows up in many ways
            _state["failed"].add(name)
            warnings.warn(
                f"snap3d: could not build the compiled CPU {what} ({error}); using the "
                "slower pure-PyTorch one. Set SNAP3D_NO_EXT=1 to skip the build.",
                RuntimeWarning,
                stacklevel=4,
            )
            return False
        _state["loaded"].add(name)
    return True


def load_extension() -> Any:
    """The compiled rasterizer's operators (``torch.ops.snap3d``), or None when disabled
    by ``SNAP3D_NO_EXT=1`` or when the build failed."""
    return torch.ops.snap3d if _build("snap3d_rasterize_cpu", "rasterizer") else None


def load_lightslab_extension() -> Any:
    """The compiled light-slab renderer's operators (``torch.ops.snap3d.lightslab_*``), or
    None (as :func:`load_extension`)."""
    return torch.ops.snap3d if _build("snap3d_lightslab_cpu", "light-slab renderer") else None


class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, options):
        eps2d, near_plane, far_plane, radius_clip, antialiased = options
        radii, means2d, depths, conics, compensations = load_extension().project_forward(
            means, quats, scales, opacities, viewmats, Ks, width, height,
            eps2d, near_plane, far_plane, radius_clip, antialiased,
        )  # fmt: skip
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii)
        ctx.settings = (width, height, eps2d, near_plane, far_plane)
        ctx.mark_non_differentiable(radii)
        return radii, means2d, depths, conics, compensations if antialiased else None

    @staticmethod
    def backward(ctx, v_radii, v_means2d, v_depths, v_conics, v_compensations):
        means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
        v_means, v_quats, v_scales, v_viewmats = load_extension().project_backward(
            means, quats, scales, viewmats, Ks, *ctx.settings, radii,
            v_means2d.contiguous(), v_depths.contiguous(), v_conics.contiguous(),
            None if v_compensations is None else v_compensations.contiguous(),
            ctx.needs_input_grad[4],
        )  # fmt: skip
        v_viewmats = v_viewmats if ctx.needs_input_grad[4] else None
        return v_means, v_quats, v_scales, None, v_viewmats, None, None, None, None


def project_gaussians_cpu(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    opacities: Tensor | None = None,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> Projection:
    """Compiled equivalent of :func:`~snap3d.render._projection.project_gaussians`.

    Needs :func:`load_extension` to have returned the operators. Like gsplat, it gives no
    gradients for ``Ks`` and none through culled Gaussians.
    """
    dtype = means.dtype
    options = (eps2d, near_plane, far_plane, radius_clip, antialiased)
    return Projection(
        *_ProjectCPU.apply(
            means.contiguous(),
            quats.to(dtype).contiguous(),
            scales.to(dtype).contiguous(),
            None if opacities is None else opacities.detach().to(dtype).contiguous(),
            viewmats.to(dtype).contiguous(),
            Ks.to(dtype).contiguous(),
            width,
            height,
            options,
        )
    )


class _CompositeCPU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        means2d: Tensor,
        conics: Tensor,
        colors: Tensor,
        opacities: Tensor,
        backgrounds: Tensor | None,
        radii: Tensor,
        bins: TileBins,
        width: int,
        height: int,
        tile_size: int,
        absgrad: Tensor | None,
    ):
        extension = load_extension()
        layout = (bins.isect_offsets, bins.flatten_ids, width, height, tile_size)
        render_colors, render_alphas, last_ids = extension.rasterize_forward(
            means2d, conics, colors, opacities, radii, backgrounds, *layout
        )
        ctx.save_for_backward(
            means2d, conics, colors, opacities, radii, backgrounds, render_alphas, last_ids
        )
        ctx.layout, ctx.absgrad = layout, absgrad
        ctx.mark_non_differentiable(last_ids)
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, v_colors: Tensor, v_alphas: Tensor):
        means2d, conics, colors, opacities, radii, backgrounds, alphas, last_ids = ctx.saved_tensors
        isect_offsets, flatten_ids, width, height, tile_size = ctx.layout
        grads = load_extension().rasterize_backward(
            means2d,
            conics,
            colors,
            opacities,
            radii,
            backgrounds,
            isect_offsets,
            flatten_ids,
            alphas,
            last_ids,
            v_colors.contiguous(),
            v_alphas.contiguous(),
            width,
            height,
            tile_size,
            ctx.absgrad is not None,
        )
        D = colors.shape[-1]
        if ctx.absgrad is not None:
            ctx.absgrad.add_(grads[:, 6 + D :])
        v_backgrounds = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_backgrounds = (v_colors * (1 - alphas)).sum(dim=(1, 2))
        return (
            grads[:, 0:2],
            grads[:, 2:5],
            grads[:, 6 : 6 + D],
            grads[:, 5],
            v_backgrounds,
            *([None] * 6),
        )


def composite_tiles_cpu(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    radii: Tensor,
    bins: TileBins,
    width: int,
    height: int,
    tile_size: int,
    backgrounds: Tensor | None = None,
    absgrad: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Compiled equivalent of :func:`~snap3d.render._composite.composite_tiles`.

    Needs :func:`load_extension` to have returned the module. Takes the same arguments plus
    ``radii`` [I, N, 2] int32, which bound the pixels each Gaussian is evaluated on.

    Returns:
        colours [I, H, W, D] and alphas [I, H, W, 1].
    """
    n_images, N, D = colors.shape
    return _CompositeCPU.apply(
        means2d.reshape(n_images * N, 2).contiguous(),
        conics.reshape(n_images * N, 3).contiguous(),
        colors.reshape(n_images * N, D).contiguous(),
        opacities.reshape(n_images * N).contiguous(),
        None if backgrounds is None else backgrounds.contiguous(),
        radii.reshape(n_images * N, 2).contiguous(),
        bins,
        width,
        height,
        tile_size,
        None if absgrad is None else absgrad.view(n_images * N, 2),
    )
