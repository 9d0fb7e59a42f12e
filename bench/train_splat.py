"""Test PSNR against wall time for the `splat` method on the bundled 360 scene.

    python bench/train_splat.py [--out bench/results/train_splat.json] [--budget 300]
                                [--baseline-pure-torch]

Training time excludes evaluation (the clock stops while the test split renders).
Goal (issue 3): 38 dB or more within 5 minutes at 128 px on a 2-core CPU. The JSON
records threads and the CPU/wall ratio: on a shared machine, compare runs only with a
baseline measured in the same run (``--baseline-pure-torch`` trains the same schedule
with the portable torch rasterizer instead of the compiled CPU path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_one(data: Path, budget: float, eval_every: int, max_steps: int | None) -> dict:
    import torch

    from snap3d.representations.splat import SplatConfig
    from snap3d.train import TrainConfig, Trainer

    out = Path(tempfile.mkdtemp(prefix="bench-splat-"))
    cfg = TrainConfig(
        data=data, output=out, device="cpu", progress=False, save_every=0, max_steps=max_steps
    )
    trainer = Trainer("splat", SplatConfig(), cfg)
    trainer.setup()
    curve = []
    train_wall = 0.0
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    while trainer.step < trainer.max_steps and train_wall < budget:
        t = time.perf_counter()
        trainer.train_step()
        train_wall += time.perf_counter() - t
        if trainer.step % eval_every == 0 or trainer.step == trainer.max_steps:
            result = trainer.run_eval()
            curve.append(
                {
                    "step": trainer.step,
                    "train_seconds": round(train_wall, 2),
                    "psnr": round(result["psnr"], 3),
                    "ssim": round(result["ssim"], 4),
                    "gaussians": trainer.model.num_gaussians,
                }
            )
            print(json.dumps(curve[-1]), flush=True)
    final = trainer.run_eval()
    total_wall = time.perf_counter() - wall0
    return {
        "max_steps": trainer.max_steps,
        "steps_done": trainer.step,
        "train_seconds": round(train_wall, 2),
        "ms_per_step": round(1000 * train_wall / max(trainer.step, 1), 2),
        "final_psnr": round(final["psnr"], 3),
        "final_ssim": round(final["ssim"], 4),
        "gaussians": trainer.model.num_gaussians,
        "curve": curve,
        "torch_threads": torch.get_num_threads(),
        "cpu_over_wall": round((time.process_time() - cpu0) / total_wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "object360")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train_splat.json")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--baseline-pure-torch", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            "RESULT " + json.dumps(run_one(args.data, args.budget, args.eval_every, args.max_steps))
        )
        return

    def child(env_extra: dict) -> dict:
        cmd = [sys.executable, __file__, "--child", "--data", str(args.data), "--budget", str(args.budget),
               "--eval-every", str(args.eval_every)]  # fmt: skip
        if args.max_steps:
            cmd += ["--max-steps", str(args.max_steps)]
        proc = subprocess.run(cmd, env={**os.environ, **env_extra}, capture_output=True, text=True)
        sys.stderr.write(proc.stderr[-2000:])
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise SystemExit(f"benchmark child failed:\n{proc.stdout[-2000:]}")
        return json.loads(lines[-1][7:])

    report = {"scene": str(args.data), "budget_seconds": args.budget, "nproc": os.cpu_count()}
    report["snap3d"] = child({})
    if args.baseline_pure_torch:
        report["pure_torch"] = child({"SNAP3D_NO_EXT": "1"})
    report["goal"] = {"psnr_db": 38.0, "within_seconds": 300}
    report["goal_met"] = (
        report["snap3d"]["final_psnr"] >= 38.0 and report["snap3d"]["train_seconds"] <= 300
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for name in ("snap3d", "pure_torch"):
        if name in report:
            r = report[name]
            print(f"{name:10s} steps={r['steps_done']:5d} train={r['train_seconds']:7.1f}s "
                  f"psnr={r['final_psnr']:.2f} dB gaussians={r['gaussians']} ms/step={r['ms_per_step']}")  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
