"""``snap3d demo``: the whole path on the bundled 360 scene in a few minutes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from snap3d.errors import Snap3dError

REPO_ASSETS = Path(__file__).resolve().parent.parent / "assets"


def bundled_scene(name: str) -> Path:
    """Path of a bundled scene (``object360``, ``forward``, ``dynamic``).

    Looks in the source checkout's ``assets/`` and then ``./assets``.
    """
    for root in (REPO_ASSETS, Path.cwd() / "assets"):
        if (root / name).is_dir():
            return root / name
    raise Snap3dError(
        f"bundled scene {name!r} not found in {REPO_ASSETS} or ./assets; "
        "run `python scripts/make_assets.py` in a checkout, or pass --data PATH"
    )


def demo_command(args) -> None:
    from snap3d.io.export import export_run
    from snap3d.representations.splat import SplatConfig
    from snap3d.train import TrainConfig, Trainer

    data = args.data or bundled_scene("object360")
    out = Path(args.output)
    config = TrainConfig(data=data, output=out, max_steps=args.max_steps, device=args.device)
    trainer = Trainer("splat", SplatConfig(), config)
    trainer.setup()
    print(f"[1/3] training splat on {trainer.train_data} for {trainer.max_steps} steps")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    print("[2/3] evaluating on the test split")
    result = trainer.run_eval(write_renders=True)
    print("[3/3] exporting")
    ply = export_run(out, "ply", device=str(trainer.device))
    spz = export_run(out, "spz", device=str(trainer.device))
    summary = {
        "train_seconds": round(seconds, 1),
        "gaussians": trainer.model.num_gaussians,
        "test_psnr": None if result is None else round(result["psnr"], 2),
        "test_ssim": None if result is None else round(result["ssim"], 4),
        "lpips": None if result is None else result["lpips"],
    }
    print(json.dumps(summary, indent=1))
    renders = out / "renders" / (result["split"] if result else "test")
    print(
        f"\nrun:      {out}\n"
        f"renders:  {renders}\n"
        f"ply:      {ply} ({ply.stat().st_size / 1e6:.2f} MB)\n"
        f"spz:      {spz} ({spz.stat().st_size / 1e6:.2f} MB)\n"
        f"metrics:  {out / 'metrics.json'}\n\n"
        f"view it:  snap3d view {out}   (needs: pip install 'snap3d[viewer]')\n"
        f"video:    snap3d render {out} --orbit 120"
    )
