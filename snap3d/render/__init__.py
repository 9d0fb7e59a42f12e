"""Rasterizers and samplers, with backend dispatch (torch | gsplat)."""

from snap3d.render.gaussians import rasterize_gaussians

__all__ = ["rasterize_gaussians"]
