"""Evaluation: render a split in dataset order, score it, write PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from snap3d import metrics
from snap3d.data.dataset import SceneDataset
from snap3d.io.atomic import atomic_write
from snap3d.representations.base import SceneModel


def save_png(path: Path, image: torch.Tensor) -> None:
    """Write [H,W,3|4] float in [0,1] as an 8-bit PNG, atomically."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        Image.fromarray(arr).save(f, format="PNG")


@torch.no_grad()
def evaluate(
    model: SceneModel,
    dataset: SceneDataset,
    render_dir: Path | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """Render every camera of ``dataset`` and compare with its images.

    Returns:
        {"psnr", "ssim", "lpips" (None when unavailable), "lpips_note", "num_images",
         "per_image_psnr"}. PNGs go to ``render_dir/<index:04d>.png`` in dataset order.
    """
    model.eval()
    device = device or next(iter(model.parameters()), torch.zeros(())).device
    preds, gts = [], []
    for i in range(len(dataset)):
        out = model.render(dataset.cameras[i].to(device))
        pred = out.rgb[0].clamp(0, 1).cpu()
        preds.append(pred)
        gts.append(dataset.image(i))
        if render_dir is not None:
            save_png(Path(render_dir) / f"{i:04d}.png", pred)
    pred_t, gt_t = torch.stack(preds), torch.stack(gts)
    psnrs = metrics.psnr(pred_t, gt_t)
    ssims = metrics.ssim(pred_t, gt_t)
    lp = metrics.lpips(pred_t, gt_t)
    model.train()
    return {
        "psnr": float(psnrs.mean()),
        "ssim": float(ssims.mean()),
        "lpips": None if lp is None else float(lp.mean()),
        "lpips_note": metrics.lpips_unavailable_reason(),
        "num_images": len(dataset),
        "per_image_psnr": [round(float(p), 3) for p in psnrs],
    }
