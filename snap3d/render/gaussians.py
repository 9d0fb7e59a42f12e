"""Rasterization of 3D Gaussians: one entry point, ``torch`` and ``gsplat`` backends."""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
from torch import Tensor

from snap3d.errors import Snap3dError
from snap3d.render._composite import composite_tiles
from snap3d.render._cpu import composite_tiles_cpu, load_extension, project_gaussians_cpu
from snap3d.render._projection import project_gaussians
from snap3d.render._sh import MAX_SH_DEGREE, eval_sh
from snap3d.render._tiles import bin_gaussians

RenderMode = Literal["RGB", "RGB+D", "RGB+ED", "D", "ED"]
RasterizeMode = Literal["classic", "antialiased"]
Backend = Literal["auto", "torch", "gsplat"]
RENDER_MODES = ("RGB", "RGB+D", "RGB+ED", "D", "ED")
RASTERIZE_MODES = ("classic", "antialiased")
BACKENDS = ("auto", "torch", "gsplat")


def rasterize_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: RenderMode = "RGB",
    rasterize_mode: RasterizeMode = "classic",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    tile_size: int = 16,
    absgrad: bool = False,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render 3D Gaussians into ``C`` pinhole cameras, differentiably.

    Arguments and outputs mean what they mean in ``gsplat.rasterization`` (non-packed
    mode), so gsplat's densification strategies work with either backend. Each Gaussian
    is projected with the EWA approximation (``eps2d`` added to its 2D covariance), the
    image is cut into tiles, and every pixel composites the Gaussians of its tile front to
    back: ``alpha = min(0.999, opacity * exp(-σ))``, Gaussians with ``alpha < 1/255`` are
    skipped, and a pixel stops before the Gaussian that would leave transmittance at or
    below 1e-4. Pixel ``(x, y)`` is sampled at its centre ``(x + 0.5, y + 0.5)``.

    Backends: ``"gsplat"`` runs gsplat's CUDA kernels (CUDA tensors only). ``"torch"`` runs
    anywhere torch does; on CPU it composites with a C++ extension compiled on first use
    (set ``SNAP3D_NO_EXT=1`` for plain PyTorch operations, which are also the fallback if
    the build fails). ``"auto"`` picks gsplat on CUDA when it imports, else torch.

    Args:
        means: Gaussian centres in world space. [N, 3]
        quats: rotations ``(w, x, y, z)``, not necessarily normalised. [N, 4]
        scales: standard deviations along the rotated axes, linear (not log). [N, 3]
        opacities: opacities in [0, 1] (after the sigmoid). [N]
        colors: colours or features [N, D] or per camera [C, N, D]; with ``sh_degree``,
            SH coefficients [N, K, 3] or [C, N, K, 3] with ``(sh_degree + 1)² <= K``.
        viewmats: world-to-camera transforms, OpenCV axes (x right, y down, z forward).
            [C, 4, 4]
        Ks: pinhole intrinsics. [C, 3, 3]
        width: image width in pixels.
        height: image height in pixels.
        sh_degree: evaluate ``colors`` as SH of this degree along the direction from the
            camera centre to each mean, then ``max(0, value + 0.5)``; None for plain colours.
        backgrounds: colour behind the Gaussians per camera, or None for zero. [C, D]
        render_mode: ``"RGB"`` colours; ``"D"`` accumulated depth ``Σ w z``; ``"ED"``
            expected depth ``Σ w z / Σ w``; ``"RGB+D"``/``"RGB+ED"`` both, depth last.
        rasterize_mode: ``"antialiased"`` scales opacities by
            ``sqrt(det Σ2d / det(Σ2d + eps2d I))`` (Mip-Splatting), ``"classic"`` does not.
        near_plane: Gaussians nearer than this depth are culled.
        far_plane: Gaussians farther than this depth are culled.
        eps2d: blur added to the diagonal of each 2D covariance, in pixels².
        radius_clip: Gaussians whose pixel radii are both at most this are culled.
        tile_size: tile side in pixels.
        absgrad: also accumulate ``meta["means2d"].absgrad``, the per-pixel absolute
            gradients of the projected centres summed per Gaussian (AbsGS).
        backend: ``"auto"``, ``"torch"`` or ``"gsplat"``.

    Returns:
        A tuple of

        - **render_colors**: [C, H, W, D'], ``D' = D`` for ``"RGB"``, ``D + 1`` with depth,
          1 for depth only.
        - **render_alphas**: accumulated opacity. [C, H, W, 1]
        - **meta**: intermediate results keyed as gsplat does: ``radii`` [C, N, 2] int32
          (0 for culled Gaussians), ``means2d`` [C, N, 2] whose ``.grad`` after backward is
          the screen-space gradient, ``depths`` [C, N], ``conics`` [C, N, 3],
          ``opacities`` [C, N] (with the antialiasing factor), ``tiles_per_gauss``,
          ``isect_ids``, ``flatten_ids``, ``isect_offsets``, ``tile_width``,
          ``tile_height``, ``width``, ``height``, ``tile_size``, ``n_cameras``,
          ``n_batches`` and ``batch_ids``/``camera_ids``/``gaussian_ids`` (None).

    Example:
        >>> means = torch.tensor([[0.0, 0.0, 3.0]])
        >>> quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        >>> scales = torch.full((1, 3), 0.1)
        >>> K = torch.tensor([[[50.0, 0.0, 16.0], [0.0, 50.0, 16.0], [0.0, 0.0, 1.0]]])
        >>> rgb, alpha, meta = rasterize_gaussians(
        ...     means, quats, scales, torch.ones(1), torch.ones(1, 3), torch.eye(4)[None], K, 32, 32
        ... )
        >>> rgb.shape, alpha.shape, meta["radii"].shape
        (torch.Size([1, 32, 32, 3]), torch.Size([1, 32, 32, 1]), torch.Size([1, 1, 2]))
    """
    C, N = _check_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree
    )
    if render_mode not in RENDER_MODES:
        raise Snap3dError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise Snap3dError(
            f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}"
        )
    D = 3 if sh_degree is not None else colors.shape[-1]
    if backgrounds is not None and tuple(backgrounds.shape) != (C, D):
        raise Snap3dError(f"backgrounds must be [C, D] = [{C}, {D}], got {list(backgrounds.shape)}")
    options = dict(
        sh_degree=sh_degree,
        backgrounds=backgrounds,
        render_mode=render_mode,
        rasterize_mode=rasterize_mode,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        radius_clip=radius_clip,
        tile_size=tile_size,
        absgrad=absgrad,
    )
    args = (means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    if _pick_backend(backend, means.device) == "gsplat":
        return _rasterize_gsplat(*args, **options)
    return _rasterize_torch(*args, **options)


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree):
    N, C = means.shape[0] if means.dim() else 0, viewmats.shape[0] if viewmats.dim() else 0
    expected = {
        "means": (means, (N, 3), "[N, 3]"),
        "quats": (quats, (N, 4), "[N, 4]"),
        "scales": (scales, (N, 3), "[N, 3]"),
        "opacities": (opacities, (N,), "[N]"),
        "viewmats": (viewmats, (C, 4, 4), "[C, 4, 4]"),
        "Ks": (Ks, (C, 3, 3), "[C, 3, 3]"),
    }
    for name, (tensor, shape, pattern) in expected.items():
        if tuple(tensor.shape) != shape:
            raise Snap3dError(
                f"{name} must be {pattern} with N = {N} Gaussians and C = {C} cameras, "
                f"got {list(tensor.shape)}"
            )
    if sh_degree is None:
        colors_ok = colors.dim() in (2, 3) and colors.shape[-2] == N
        colors_ok &= colors.dim() == 2 or colors.shape[0] == C
        if not colors_ok:
            raise Snap3dError(f"colors must be [N, D] or [C, N, D], got {list(colors.shape)}")
    else:
        if not 0 <= sh_degree <= MAX_SH_DEGREE:
            raise Snap3dError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {sh_degree}")
        colors_ok = colors.dim() in (3, 4) and colors.shape[-3] == N and colors.shape[-1] == 3
        colors_ok &= colors.dim() == 3 or colors.shape[0] == C
        colors_ok &= colors.shape[-2] >= (sh_degree + 1) ** 2
        if not colors_ok:
            raise Snap3dError(
                f"with sh_degree={sh_degree}, colors must be [N, K, 3] or [C, N, K, 3] with "
                f"K >= {(sh_degree + 1) ** 2}, got {list(colors.shape)}"
            )
    if width <= 0 or height <= 0:
        raise Snap3dError(f"image size must be positive, got {width}x{height}")
    return C, N


@functools.cache
def _gsplat_importable() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise Snap3dError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "gsplat":
        if device.type != "cuda":
            raise Snap3dError(
                f"backend='gsplat' needs CUDA tensors, got tensors on {device}; "
                "use backend='torch' (or 'auto') to render on this device"
            )
        if not _gsplat_importable():
            raise Snap3dError("backend='gsplat' needs the gsplat package, which is not installed")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and _gsplat_importable() else "torch"
    return backend


def _rasterize_gsplat(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, **options
):
    from gsplat import rasterization

    render_colors, render_alphas, meta = rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        packed=False,
        **options,
    )
    if meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()
    radii = meta["radii"]
    if radii.ndim == 2:  # gsplat < 1.5: one radius per Gaussian and camera, [C, N]
        meta["radii"] = radii[..., None].expand(*radii.shape, 2)
    return render_colors, render_alphas, meta


def _rasterize_torch(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmats,
    Ks,
    width,
    height,
    *,
    sh_degree,
    backgrounds,
    render_mode,
    rasterize_mode,
    near_plane,
    far_plane,
    eps2d,
    radius_clip,
    tile_size,
    absgrad,
):
    C, N = viewmats.shape[0], means.shape[0]
    compiled = (
        means.device.type == "cpu"
        and means.dtype in (torch.float32, torch.float64)
        and load_extension() is not None
    )
    proj = (project_gaussians_cpu if compiled else project_gaussians)(
        means,
        quats,
        scales,
        viewmats,
        Ks,
        width,
        height,
        opacities=opacities,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        antialiased=rasterize_mode == "antialiased",
    )
    view_opacities = opacities.expand(C, N)
    if proj.compensations is not None:
        view_opacities = view_opacities * proj.compensations

    if sh_degree is not None:
        camera_centres = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
        dirs = means[None] - camera_centres[:, None]  # [C, N, 3]
        coeffs = colors.expand(C, *colors.shape[-3:])
        colors = torch.clamp_min(eval_sh(sh_degree, dirs, coeffs) + 0.5, 0.0)
    else:
        colors = colors.expand(C, *colors.shape[-2:])
    depths = proj.depths[..., None]
    if render_mode in ("D", "ED"):
        colors = depths
        backgrounds = None if backgrounds is None else backgrounds.new_zeros(C, 1)
    elif render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)

    bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, width, height, tile_size)
    means2d = proj.means2d
    absgrad_sum = None
    if means2d.requires_grad:
        means2d.retain_grad()
        if absgrad:
            absgrad_sum = torch.zeros_like(means2d)
            means2d.absgrad = absgrad_sum  # filled in during backward
    composite_args = (means2d, proj.conics, colors, view_opacities)
    layout = (bins, width, height, tile_size, backgrounds, absgrad_sum)
    if compiled:
        render_colors, render_alphas = composite_tiles_cpu(*composite_args, proj.radii, *layout)
    else:
        render_colors, render_alphas = composite_tiles(*composite_args, *layout)

    if render_mode in ("ED", "RGB+ED"):
        expected_depth = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], expected_depth], dim=-1)
    meta = {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": proj.radii,
        "means2d": means2d,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": view_opacities,
        "tile_width": bins.tile_width,
        "tile_height": bins.tile_height,
        "tiles_per_gauss": bins.tiles_per_gauss,
        "isect_ids": bins.isect_ids,
        "flatten_ids": bins.flatten_ids,
        "isect_offsets": bins.isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": C,
    }
    return render_colors, render_alphas, meta
