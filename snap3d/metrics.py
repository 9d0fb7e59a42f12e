"""Image quality metrics on [..., H, W, 3] images in [0, 1]."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(pred: Tensor, target: Tensor, max_val: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB of [..., H, W, C] images; one value per image.

    Identical images give +inf.
    """
    mse = ((pred.float() - target.float()) ** 2).flatten(-3).mean(-1)
    return 10 * torch.log10(max_val**2 / mse)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Structural similarity (Gaussian window 11, sigma 1.5) of [N,H,W,C] images; [N].

    Uses torchmetrics' implementation, the one nerfstudio and gsplat report.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    p = pred.float().permute(0, 3, 1, 2)
    t = target.float().permute(0, 3, 1, 2)
    return structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim_loss(pred: Tensor, target: Tensor, size: int = 11, sigma: float = 1.5) -> Tensor:
    """Differentiable D-SSIM, 1 - mean SSIM, of [N,H,W,C] images (a scalar).

    The same quantity as ``ssim`` (torchmetrics' reflection padding and window), computed
    with two 1D convolutions instead of one 2D one: several times faster in training.
    """
    c = pred.shape[-1]
    x = pred.permute(0, 3, 1, 2)
    y = target.permute(0, 3, 1, 2).to(x)
    w = _gaussian_window(size, sigma, x)
    wh = w.view(1, 1, 1, size).repeat(5 * c, 1, 1, 1)
    wv = w.view(1, 1, size, 1).repeat(5 * c, 1, 1, 1)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    stack = F.pad(stack, (size // 2,) * 4, mode="reflect")
    blurred = F.conv2d(F.conv2d(stack, wh, groups=5 * c), wv, groups=5 * c)
    mx, my, sxx, syy, sxy = blurred.split(c, dim=1)
    vx = (sxx - mx * mx).clamp_min(0)
    vy = (syy - my * my).clamp_min(0)
    cov = sxy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return 1 - ssim_map.mean()


def lpips_unavailable_reason() -> str | None:
    """Why LPIPS cannot be computed here, or None when it can.

    LPIPS needs pretrained backbone weights; snap3d never downloads them. They count as
    present when torchmetrics and torchvision import and the AlexNet weights sit in the
    torch hub cache (or ``SNAP3D_LPIPS_WEIGHTS`` points at them).
    """
    try:
        import torchvision  # noqa: F401
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # noqa: F401
    except Exception as e:  # torchvision fails to import beside some torch builds
        return f"LPIPS needs torchvision and torchmetrics[image]: {type(e).__name__}: {e}"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    explicit = os.environ.get("SNAP3D_LPIPS_WEIGHTS")
    if explicit and Path(explicit).is_file():
        return None
    if not any(hub.glob("alexnet-*.pth")):
        return f"LPIPS backbone weights are not available locally (looked in {hub})"
    return None


def lpips(pred: Tensor, target: Tensor) -> Tensor | None:
    """LPIPS (AlexNet) of [N,H,W,3] images, or None when the weights are not present."""
    if lpips_unavailable_reason() is not None:
        return None
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
    p = pred.float().permute(0, 3, 1, 2).clamp(0, 1)
    t = target.float().permute(0, 3, 1, 2).clamp(0, 1)
    return torch.stack([metric(p[i : i + 1], t[i : i + 1]) for i in range(p.shape[0])])
