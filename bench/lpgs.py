"""Benchmark: parent/child splats (lpgs) against Gaussian splats (splat): quality and bytes.

In one run, on the bundled 360° RGBA object (assets/object360) and forward-facing scene
(assets/forward):

- trains ``splat`` (its default config) for ``--steps`` steps;
- trains ``lpgs`` from scratch for ``--steps`` steps;
- trains ``lpgs --init-from`` that splat run: parents clustered from its Gaussians, heads
  distilled, then ``--init-steps`` photometric steps (default: ``--steps``, the same
  photometric steps as the others; the splat run it starts from comes on top);

and for each run scores the test split (PSNR, SSIM), counts the stored primitives
(Gaussians for splat, parents for lpgs) and exports it with ``snap3d export`` as ``.ply``
and ``.spz`` (lpgs: its decoded children) and, for lpgs, as the compact ``.lpgs`` file,
which is loaded back and scored again (``psnr_file``: what ships). The goal the summary
checks: the ``.lpgs`` file at least 25x smaller than the splat ``.ply``, with a PSNR at
most 0.2 dB below splat's.

It writes JSON and prints a table. Step counts default to the CPU schedules' 5000; on a
CPU shared with other work that takes hours, so ``--steps`` lowers them (the schedules
scale with the step count).

    python bench/lpgs.py [--out bench/results/lpgs.json] [--steps 5000] [--init-steps 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from snap3d.io.export import export_run
from snap3d.io.lpgs import load_lpgs
from snap3d.representations.lpgs import LPGSConfig
from snap3d.representations.splat import SplatConfig
from snap3d.train import TrainConfig, Trainer, evaluate

ROOT = Path(__file__).resolve().parents[1]
SCENES = {"object360": ROOT / "assets" / "object360", "forward": ROOT / "assets" / "forward"}
PLY_RATIO_GOAL = 25.0
PSNR_DROP_GOAL = 0.2


def train_and_measure(
    name: str, method: str, config, scene: Path, run_dir: Path, steps: int, device: str
) -> dict:
    """Train one run, score it, export it; the measurements as a dict."""
    cfg = TrainConfig(
        data=scene, output=run_dir, max_steps=steps, progress=False, device=device, save_every=0
    )
    trainer = Trainer(method, config, cfg)
    device = str(trainer.device)  # "auto" resolved, for export and loading
    start = time.perf_counter()
    cpu_start = time.process_time()
    trainer.setup()  # lpgs --init-from distils here: counted as training
    trainer.train()
    train_wall, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    scores = trainer.run_eval()
    model = trainer.model
    row = {
        "scene": scene.name,
        "run": name,
        "method": method,
        "steps": steps,
        "train_seconds": round(train_wall, 1),
        "train_cpu_seconds": round(train_cpu, 1),
        "psnr": round(scores["psnr"], 3),
        "ssim": round(scores["ssim"], 4),
        "describe": model.describe(),
        "bytes": {},
    }
    row["primitives"] = model.num_parents if method == "lpgs" else model.num_gaussians
    row["splats_exported"] = model.to_splats().num
    for fmt in ("ply", "spz") + (("lpgs",) if method == "lpgs" else ()):
        path = export_run(run_dir, fmt, run_dir / "exports" / f"scene.{fmt}", device=device)
        row["bytes"][fmt] = path.stat().st_size
    if method == "lpgs":
        shipped = load_lpgs(run_dir / "exports" / "scene.lpgs", device)
        row["psnr_file"] = round(evaluate(shipped, trainer.eval_data(), None, device)["psnr"], 3)
    print(
        f"  {scene.name:10s} {name:12s} {row['psnr']:6.2f} dB  {row['primitives']:>6d} stored  "
        f"{train_wall:7.0f} s",
        flush=True,
    )
    return row


def summarize(rows: list[dict]) -> list[dict]:
    """Per scene and lpgs run: PLY/lpgs size ratio and PSNR difference to splat."""
    out = []
    for row in rows:
        if row["method"] != "lpgs":
            continue
        splat = next(r for r in rows if r["scene"] == row["scene"] and r["method"] == "splat")
        ratio = splat["bytes"]["ply"] / row["bytes"]["lpgs"]
        drop = splat["psnr"] - row["psnr_file"]
        out.append(
            {
                "scene": row["scene"],
                "run": row["run"],
                "splat_ply_over_lpgs": round(ratio, 1),
                "psnr_below_splat": round(drop, 3),
                "goal_met": ratio >= PLY_RATIO_GOAL and drop <= PSNR_DROP_GOAL,
            }
        )
    return out


def print_table(rows: list[dict], summary: list[dict]) -> None:
    head = (
        f"{'scene':10s} {'run':12s} {'steps':>5s} {'train s':>7s} {'PSNR':>6s} {'file':>6s} "
        f"{'stored':>7s} {'splats':>7s} {'.ply KB':>8s} {'.spz KB':>8s} {'.lpgs KB':>8s}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        b = r["bytes"]
        lpgs = f"{b['lpgs'] / 1e3:8.1f}" if "lpgs" in b else f"{'-':>8s}"
        file_psnr = f"{r['psnr_file']:6.2f}" if "psnr_file" in r else f"{'-':>6s}"
        print(
            f"{r['scene']:10s} {r['run']:12s} {r['steps']:5d} {r['train_seconds']:7.0f} "
            f"{r['psnr']:6.2f} {file_psnr} {r['primitives']:7d} {r['splats_exported']:7d} "
            f"{b['ply'] / 1e3:8.1f} {b['spz'] / 1e3:8.1f} {lpgs}"
        )
    print(
        f"\ngoal: .lpgs >= {PLY_RATIO_GOAL:.0f}x smaller than splat .ply, "
        f"PSNR (from the file) <= {PSNR_DROP_GOAL} dB below splat"
    )
    for s in summary:
        print(
            f"{s['scene']:10s} {s['run']:12s} splat.ply/lpgs = {s['splat_ply_over_lpgs']:6.1f}x  "
            f"PSNR {-s['psnr_below_splat']:+.2f} dB  {'met' if s['goal_met'] else 'NOT met'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--steps", type=int, default=None, help="splat and lpgs steps")
    parser.add_argument("--init-steps", type=int, default=None, help="lpgs --init-from steps")
    parser.add_argument("--scenes", type=str, default=",".join(SCENES))
    parser.add_argument("--runs", type=Path, default=None, help="keep run folders here")
    parser.add_argument("--device", type=str, default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or SplatConfig().default_max_steps("cpu")
    init_steps = args.init_steps or steps
    runs_root = args.runs or Path(tempfile.mkdtemp(prefix="snap3d-bench-lpgs-"))
    load_before = os.getloadavg()
    rows = []
    for scene_name in args.scenes.split(","):
        scene = SCENES[scene_name]
        base = runs_root / scene_name
        splat_dir = base / "splat"
        jobs = [
            ("splat", "splat", SplatConfig(), splat_dir, steps),
            ("lpgs", "lpgs", LPGSConfig(), base / "lpgs", steps),
            ("lpgs-init", "lpgs", LPGSConfig(init_from=splat_dir), base / "lpgs-init", init_steps),
        ]
        for name, method, config, run_dir, n in jobs:
            rows.append(train_and_measure(name, method, config, scene, run_dir, n, args.device))
    summary = summarize(rows)
    print_table(rows, summary)
    result = {
        "benchmark": "lpgs",
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "device": args.device,
            "load_average_before": load_before[0],
            "load_average_after": os.getloadavg()[0],
        },
        "steps": steps,
        "init_steps": init_steps,
        "runs": str(runs_root),
        "results": rows,
        "summary": summary,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
