"""Benchmark: light-slab light fields (lightslab) against Gaussian splats (splat).

In one run, on the bundled forward-facing scene (assets/forward) and the 360° RGBA
object (assets/object360), each with the slab setup ``lightslab`` picks for it:

- trains ``splat``; ``lightslab`` from the images (ray batches, MLP decoder); and
  ``lightslab`` taught by that splat run (LightSpeed's protocol: pseudo-views rendered
  by the teacher around the training cameras, mixed with the real images), with the MLP
  decoder and with the conv decoder; each for at most ``--budget-seconds`` of training
  (or its default step count), scoring the test split at checkpoints along the way.
  Evaluation time is not training time; rendering the pseudo-views is (the teacher's
  own training is the splat row);
- times the rendering of one 256x256 frame by every trained model (median of
  ``--repeats``, after a warm-up), wall-clock and process CPU time.

It writes JSON and prints a table. Training and rendering run in this process with
``--threads`` torch threads (default: torch's own choice); the cpu/wall ratio of each
phase shows how much of the machine it got (on a shared machine, less than the thread
count).

    python bench/lightslab.py [--out bench/results/lightslab.json] [--budget-seconds 240]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from snap3d.representations.lightslab import LightSlabConfig
from snap3d.representations.splat import SplatConfig
from snap3d.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
SCENES = {"forward": ROOT / "assets" / "forward", "object360": ROOT / "assets" / "object360"}
# Fractions of the budget at which the test split is scored (and always at the end).
CHECKPOINTS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75)


class Clock:
    """Wall-clock and process CPU seconds accumulated over timed sections."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc) -> None:
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]


def train(name: str, method: str, config, data: Path, run_dir: Path, budget: float) -> dict:
    """Train until the method's default step count or ``budget`` training seconds."""
    train_cfg = TrainConfig(
        data=data, output=run_dir, device="cpu", progress=False, save_every=0, eval_every=0
    )
    trainer = Trainer(method, config, train_cfg)
    trainer.setup()
    clock = Clock()
    curve = []
    marks = [f * budget for f in CHECKPOINTS]
    while trainer.step < trainer.max_steps and clock.wall < budget:
        with clock:
            trainer.train_step()
        done = trainer.step >= trainer.max_steps or clock.wall >= budget
        if done or (marks and clock.wall >= marks[0]):
            while marks and clock.wall >= marks[0]:
                marks.pop(0)
            result = trainer.run_eval()
            curve.append(
                {
                    "step": trainer.step,
                    "seconds": round(clock.wall, 2),
                    "psnr": round(result["psnr"], 3),
                }
            )
            print(
                f"  {name:<18} step {trainer.step:>5}  {clock.wall:7.1f}s  {result['psnr']:.2f} dB"
            )
    trainer.save()
    return {
        "trainer": trainer,
        "curve": curve,
        "steps": trainer.step,
        "max_steps": trainer.max_steps,
        "train_seconds": round(clock.wall, 2),
        "train_cpu_seconds": round(clock.cpu, 2),
        "cpu_per_wall": round(clock.cpu / max(clock.wall, 1e-9), 2),
        "final_psnr": curve[-1]["psnr"],
        "model": trainer.model.describe(),
    }


@torch.no_grad()
def render_time(model, cameras, repeats: int) -> dict:
    """Median wall and CPU milliseconds to render one frame of ``cameras``."""
    model.eval()
    model.render(cameras)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        clock = Clock()
        with clock:
            model.render(cameras)
        walls.append(clock.wall * 1000)
        cpus.append(clock.cpu * 1000)
    kernel = getattr(model, "_kernel", None)
    return {
        "render_ms": round(statistics.median(walls), 2),
        "render_ms_min": round(min(walls), 2),
        "render_cpu_ms": round(statistics.median(cpus), 2),
        "render_ms_all": [round(w, 2) for w in walls],
        "renderer": (
            ("compiled" if kernel() is not None else "pytorch")
            if kernel is not None
            else getattr(model.config, "backend", None)
        ),
    }


def entries(splat_run: Path) -> list[tuple[str, str, object]]:
    """(name, method, config) of everything trained on one scene, in order; the runs
    with a teacher learn from the first one."""
    return [
        ("splat", "splat", SplatConfig()),
        ("lightslab", "lightslab", LightSlabConfig()),
        ("lightslab+teacher", "lightslab", LightSlabConfig(teacher=splat_run)),
        (
            "lightslab-wide+teacher",
            "lightslab",
            LightSlabConfig(hidden_dim=64, feature_dim=8, teacher=splat_run),
        ),
        ("lightslab-conv+teacher", "lightslab", LightSlabConfig(decoder="conv", teacher=splat_run)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lightslab.json")
    parser.add_argument("--budget-seconds", type=float, default=240.0)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--runs", type=Path, default=None, help="keep the runs here")
    parser.add_argument(
        "--only", nargs="+", default=None, help="train only these entries (splat always: teacher)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from snap3d.data import load

    runs = args.runs or Path(tempfile.mkdtemp(prefix="bench-lightslab-"))
    report = {
        "benchmark": "lightslab",
        "budget_seconds": args.budget_seconds,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "load_average_start": os.getloadavg(),
        "scenes": {},
    }
    for scene in args.scenes:
        data = SCENES[scene]
        print(f"{scene}:")
        camera = load(data, split="test").cameras[0].resized(256, 256)
        results = {}
        for name, method, config in entries(runs / scene / "splat"):
            if args.only and name != "splat" and name not in args.only:
                continue
            out = train(name, method, config, data, runs / scene / name, args.budget_seconds)
            model = out.pop("trainer").model
            out.update(render_time(model, camera, args.repeats))
            results[name] = out
        for name, r in results.items():
            if name != "splat":
                r["render_speedup_vs_splat"] = round(
                    results["splat"]["render_ms"] / r["render_ms"], 2
                )
                r["render_cpu_speedup_vs_splat"] = round(
                    results["splat"]["render_cpu_ms"] / r["render_cpu_ms"], 2
                )
                r["render_min_speedup_vs_splat"] = round(
                    results["splat"]["render_ms_min"] / r["render_ms_min"], 2
                )
        report["scenes"][scene] = results
    report["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"wrote {args.out}", file=sys.stderr)


def print_table(report: dict) -> None:
    print(
        f"\n{'scene':<10} {'method':<23} {'steps':>5} {'train s':>7} {'PSNR':>6} "
        f"{'render ms':>9} {'(cpu)':>7} {'x splat':>7} {'cpu/wall':>8}  PSNR over time (s: dB)"
    )
    for scene, results in report["scenes"].items():
        for name, r in results.items():
            curve = ", ".join(f"{p['seconds']:.0f}: {p['psnr']:.1f}" for p in r["curve"])
            speedup = r.get("render_speedup_vs_splat", 1.0)
            print(
                f"{scene:<10} {name:<23} {r['steps']:>5} {r['train_seconds']:>7.1f} "
                f"{r['final_psnr']:>6.2f} {r['render_ms']:>9.1f} {r['render_cpu_ms']:>7.1f} "
                f"{speedup:>7.2f} {r['cpu_per_wall']:>8.2f}  {curve}"
            )


if __name__ == "__main__":
    main()
