"""Benchmark: iPhone bundles of splat, lpgs and lightslab runs: bytes and fidelity.

In one run, on the bundled 360° RGBA object (assets/object360) and forward-facing scene
(assets/forward), at ``--downscale`` (default 2: 64 px wide):

- trains ``splat`` (SH degree 3) for ``--splat-steps``, ``lpgs`` from that splat run
  (``--init-from``: parents clustered, heads distilled) for ``--lpgs-steps`` and
  ``lightslab`` for ``--lightslab-steps`` (runs are kept in ``--runs`` and reused when
  they exist, so an interrupted benchmark resumes);
- exports each as an iPhone bundle (``snap3d.mobile.bundle.export_bundle``; lpgs and
  lightslab also with int8 and palettized Core ML weights), validates it, and renders
  the test split with the reference renderer (``snap3d.mobile.reference``), which reads
  the bundle alone;
- reports per bundle its bytes (each asset, the folder, the zip), the PLY bytes of the
  run's Gaussians (splat: its own; lpgs: its decoded children; lightslab has none), and
  the PSNR of the reference renders against the trained model's renders and against
  the ground truth (mean and worst image), with the model's own PSNR for comparison;
- for splat, the same for SPZ files that keep fewer SH degrees (what dropping SH buys
  and costs).

Goal (issue 7): the splat bundle at least 10x smaller than its PLY; reference renders
within 40 dB of the model for float16 assets, 35 dB for quantized ones.

    python bench/bundles.py [--out bench/results/bundles.json] [--runs runs/bench-bundles]
                            [--scenes object360 forward] [--downscale 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from snap3d.mobile import reference
from snap3d.mobile.bundle import export_bundle, validate

from snap3d.data import load
from snap3d.io import save_ply
from snap3d.io.atomic import atomic_write
from snap3d.metrics import psnr
from snap3d.train import TrainConfig, Trainer, get_method, load_model
from snap3d.train.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCENES = {"object360": ROOT / "assets" / "object360", "forward": ROOT / "assets" / "forward"}
PLY_RATIO_GOAL = 10.0
FLOAT16_DB, QUANTIZED_DB = 40.0, 35.0


def train(method: str, scene: Path, run_dir: Path, steps: int, downscale: float, **config) -> dict:
    """Train a run into ``run_dir`` unless it already holds a checkpoint; its facts."""
    if latest_checkpoint(run_dir) is not None:
        return {"reused": True}
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig(
        data=scene, output=run_dir, max_steps=steps, downscale=downscale, progress=False,
        device="cpu", save_every=0,
    )  # fmt: skip
    trainer = Trainer(method, get_method(method).config_cls(**config), cfg)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()  # lpgs --init-from distils in setup: counted as training
    return {
        "reused": False,
        "train_seconds": round(time.perf_counter() - wall, 1),
        "train_cpu_seconds": round(time.process_time() - cpu, 1),
    }


def scores(rgb: torch.Tensor, target: torch.Tensor) -> dict:
    values = psnr(rgb.clamp(0, 1), target)
    return {"mean": round(float(values.mean()), 3), "min": round(float(values.min()), 3)}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_bundle(run_dir: Path, out: Path, cams, model_rgb, gt, **options) -> dict:
    """Export, validate and reference-render one bundle."""
    start = time.perf_counter()
    export_bundle(run_dir, out, zip=True, **options)
    export_seconds = time.perf_counter() - start
    manifest = validate(out)
    bundle = reference.load_bundle(out)
    start = time.perf_counter()
    rendered = reference.render(bundle, cams).rgb
    row = {
        "options": options,
        "export_seconds": round(export_seconds, 1),
        "render_seconds": round(time.perf_counter() - start, 2),
        "assets": {a["path"]: a["bytes"] for a in manifest["assets"]},
        "bundle_bytes": folder_bytes(out),
        "zip_bytes": out.with_name(out.name + ".zip").stat().st_size,
        "psnr_vs_model": scores(rendered, model_rgb),
        "psnr_vs_ground_truth": scores(rendered, gt),
    }
    if manifest["representation"] == "lpgs":
        fallback = reference.render(bundle, cams, source="fallback").rgb
        row["fallback_psnr_vs_model"] = scores(fallback, model_rgb)
        row["fallback_psnr_vs_ground_truth"] = scores(fallback, gt)
    return row


def measure_run(name: str, run_dir: Path, work: Path) -> dict:
    model, cfg, step = load_model(run_dir)
    train_cfg = cfg["train"]
    test = load(
        train_cfg["data"], "test", train_cfg["downscale"], train_cfg.get("background", "white")
    )
    cams = test.cameras
    gt = torch.stack([test.image(i) for i in range(len(test))])
    with torch.no_grad():
        model_rgb = torch.cat([model.render(cams[i]).rgb for i in range(len(cams))])
    row = {
        "method": cfg["method"],
        "step": step,
        "describe": model.describe(),
        "test_images": len(cams),
        "model_psnr_vs_ground_truth": scores(model_rgb, gt),
        "ply_bytes": None,
    }
    if hasattr(model, "to_splats"):
        save_ply(work / f"{name}.ply", model.to_splats())
        row["ply_bytes"] = (work / f"{name}.ply").stat().st_size
    variants = ["none"] if cfg["method"] == "splat" else ["none", "int8", "palettize"]
    row["bundles"] = {
        q: measure_bundle(run_dir, work / f"{name}-{q}.snap3d", cams, model_rgb, gt, quantize=q)
        for q in variants
    }
    plain = row["bundles"]["none"]
    if row["ply_bytes"]:
        row["ply_over_bundle"] = round(row["ply_bytes"] / plain["bundle_bytes"], 2)
    if cfg["method"] == "splat":
        degree = model.to_splats().sh_degree
        row["sh_sweep"] = {
            str(d): measure_bundle(
                run_dir, work / f"{name}-sh{d}.snap3d", cams, model_rgb, gt, sh_degree=d
            )
            for d in range(degree - 1, -1, -1)
        }
    row["goals"] = {
        "float16_min_psnr_vs_model": plain["psnr_vs_model"]["min"] >= FLOAT16_DB,
        "quantized_min_psnr_vs_model": all(
            b["psnr_vs_model"]["min"] >= QUANTIZED_DB
            for q, b in row["bundles"].items()
            if q != "none"
        ),
    }
    if cfg["method"] == "splat":
        row["goals"]["ply_over_bundle_at_least_10"] = row["ply_over_bundle"] >= PLY_RATIO_GOAL
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bundles.json")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench-bundles")
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    parser.add_argument("--downscale", type=float, default=2.0)
    parser.add_argument("--splat-steps", type=int, default=1500)
    parser.add_argument("--lpgs-steps", type=int, default=500)
    parser.add_argument("--lightslab-steps", type=int, default=2000)
    args = parser.parse_args()

    report = {
        "benchmark": "bundles",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_start": list(os.getloadavg()),
        "downscale": args.downscale,
        "goals": {
            "ply_over_splat_bundle": PLY_RATIO_GOAL,
            "float16_psnr_vs_model_db": FLOAT16_DB,
            "quantized_psnr_vs_model_db": QUANTIZED_DB,
        },
        "scenes": {},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-bundles-"))
    try:
        for scene in args.scenes:
            data = SCENES[scene]
            runs = {m: args.runs / f"{scene}-{m}" for m in ("splat", "lpgs", "lightslab")}
            training = {
                "splat": train("splat", data, runs["splat"], args.splat_steps, args.downscale),
                "lpgs": train(
                    "lpgs",
                    data,
                    runs["lpgs"],
                    args.lpgs_steps,
                    args.downscale,
                    init_from=runs["splat"],
                ),  # fmt: skip
                "lightslab": train(
                    "lightslab", data, runs["lightslab"], args.lightslab_steps, args.downscale
                ),
            }
            rows = {}
            for method, run_dir in runs.items():
                rows[method] = {"training": training[method], **measure_run(
                    f"{scene}-{method}", run_dir, work
                )}  # fmt: skip
                print(summary_line(scene, method, rows[method]), flush=True)
            report["scenes"][scene] = rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}")


def summary_line(scene: str, method: str, row: dict) -> str:
    plain = row["bundles"]["none"]
    parts = [
        f"{scene:10s} {method:9s} bundle {plain['bundle_bytes']:>9,} B",
        f"ply {row['ply_bytes'] or 0:>10,} B",
        f"vs model {plain['psnr_vs_model']['mean']:6.2f} dB (min {plain['psnr_vs_model']['min']:.2f})",
        f"vs gt {plain['psnr_vs_ground_truth']['mean']:6.2f} dB "
        f"(model {row['model_psnr_vs_ground_truth']['mean']:.2f})",
    ]
    for q in ("int8", "palettize"):
        if q in row["bundles"]:
            b = row["bundles"][q]
            parts.append(f"{q} {b['bundle_bytes']:,} B {b['psnr_vs_model']['mean']:.2f} dB")
    return " | ".join(parts)


if __name__ == "__main__":
    main()
