"""Benchmark: forward+backward of rasterize_gaussians on the CPU.

Compares, in one run, the compiled C++ compositor, the plain-PyTorch compositor and a
dense reference that evaluates every Gaussian at every pixel (chunked over pixels and
recomputed in backward so that it fits in memory; only run where it finishes in
reasonable time). Each configuration runs in its own subprocess so that its peak RSS is
its own.

    python bench/rasterize.py [--out bench/results/rasterize.json] [--repeats 7]
                              [--threads 2,1] [--impls compiled,torch,dense]

Scenes are random but realistic for training: means in front of the camera with about
three quarters of them outside the view, scales giving 0.5-2.5 px standard deviations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = [(128, 10_000), (128, 100_000), (256, 10_000), (256, 100_000)]
# The dense reference costs pixels x Gaussians; only this configuration finishes in a
# reasonable time (and it is timed once).
DENSE_CONFIGS = [(128, 10_000)]


def make_scene(n: int, size: int, seed: int = 0):
    """Random Gaussians seen by one ``size`` x ``size`` pinhole camera (focal = size)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(n, generator=g) * 8 + 2
    # x, y within +-depth: the view spans +-depth/2, so about 1/4 of the means are on screen.
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * depth[:, None]
    means = torch.cat([xy, depth[:, None]], dim=1)
    sigma_px = torch.rand(n, 1, generator=g) * 2 + 0.5
    scales = sigma_px * depth[:, None] / size * (torch.rand(n, 3, generator=g) + 0.5)
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.rand(n, generator=g) * 0.9 + 0.1
    colors = torch.rand(n, 3, generator=g)
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[size, 0.0, size / 2], [0.0, size, size / 2], [0.0, 0.0, 1.0]])[None]
    return (means, quats, scales, opacities, colors), viewmats, Ks


def dense_rasterize(params, viewmats, Ks, size: int, pixels_per_chunk: int = 256):
    """Dense reference: every Gaussian at every pixel, depth-sorted, composited with the
    same rules as the tile compositors. Memory is bounded by recomputing each pixel chunk
    in backward."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from snap3d.render._projection import project_gaussians

    means, quats, scales, opacities, colors = params
    proj = project_gaussians(means, quats, scales, viewmats, Ks, size, size, opacities=opacities)
    # Every Gaussian in front of the camera, culled or not: [pixels x Gaussians].
    in_front = proj.depths[0] > 0.01
    order = torch.argsort(torch.where(in_front, proj.depths[0], torch.inf), stable=True)
    order = order[: int(in_front.sum())]
    means2d, conics = proj.means2d[0, order], proj.conics[0, order]
    opac, cols = opacities[order], colors[order]
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    pixels = torch.stack([xs, ys], -1).reshape(-1, 2)

    def chunk(pix, means2d, conics, opac, cols):
        d = means2d[None] - pix[:, None]  # [P, N, 2]
        a, b, c = conics.unbind(-1)
        sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
        alpha = torch.clamp_max(opac * torch.exp(-sigma), 0.999)
        alpha = torch.where((sigma >= 0) & (alpha >= 1 / 255), alpha, 0)
        with torch.no_grad():
            keep = torch.cumprod(1 - alpha, -1) > 1e-4
        alpha = torch.where(keep, alpha, 0)
        through = torch.cumprod(1 - alpha, -1)
        before = torch.cat([torch.ones_like(through[:, :1]), through[:, :-1]], -1)
        weights = alpha * before
        return torch.cat([weights @ cols, 1 - through[:, -1:]], -1)

    out = torch.cat(
        [
            checkpoint(chunk, pix, means2d, conics, opac, cols, use_reentrant=False)
            for pix in pixels.split(pixels_per_chunk)
        ]
    ).reshape(1, size, size, 4)
    return out[..., :3], out[..., 3:]


def run_child(impl: str, size: int, n: int, repeats: int, threads: int | None) -> dict:
    """Time forward+backward in this process; returns timings and peak RSS."""
    if impl == "torch":
        os.environ["SNAP3D_NO_EXT"] = "1"
    import torch

    if threads:
        torch.set_num_threads(threads)

    from snap3d.render import rasterize_gaussians
    from snap3d.render._cpu import load_extension

    params, viewmats, Ks = make_scene(n, size)
    if impl == "compiled" and load_extension() is None:
        return {"error": "the C++ extension could not be built"}
    weights = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(1))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        leaves = [p.clone().requires_grad_(True) for p in params]
        if impl == "dense":
            image, alpha = dense_rasterize(leaves, viewmats, Ks, size)
        else:
            image, alpha, _ = rasterize_gaussians(*leaves, viewmats, Ks, size, size)
        ((image * weights).sum() + alpha.sum()).backward()
        return alpha

    warmup = 0 if impl == "dense" else 2
    for _ in range(warmup):
        step()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        alpha = step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "impl": impl,
        "size": size,
        "n_gaussians": n,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "median_ms": 1e3 * statistics.median(walls),
        "min_ms": 1e3 * min(walls),
        "all_ms": [round(1e3 * w, 2) for w in walls],
        "median_cpu_ms": 1e3 * statistics.median(cpus),
        "cpu_over_wall": sum(cpus) / sum(walls),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_timing_mb": rss_before / 1024,
        "mean_alpha": float(alpha.detach().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--threads",
        type=str,
        default="",
        help="comma-separated torch thread counts to run, e.g. 2,1 (default: torch's)",
    )
    parser.add_argument("--impls", type=str, default="compiled,torch,dense")
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, size, n = args.child.split(",")
        threads = int(args.threads) if args.threads else None
        print(json.dumps(run_child(impl, int(size), int(n), args.repeats, threads)))
        return

    impls = args.impls.split(",")
    runs = [(impl, s, n) for impl in ("compiled", "torch") if impl in impls for s, n in CONFIGS]
    runs += [("dense", s, n) for s, n in DENSE_CONFIGS if "dense" in impls]
    results = []
    load_before = os.getloadavg()
    thread_counts = args.threads.split(",") if args.threads else [""]
    for threads in thread_counts:
        for impl, size, n in runs:
            if impl == "dense" and threads != thread_counts[0]:
                continue  # the slow baseline runs once, with the first thread count
            repeats = 1 if impl == "dense" else args.repeats
            command = [sys.executable, __file__, "--child", f"{impl},{size},{n}"]
            command += ["--repeats", str(repeats)] + (["--threads", threads] if threads else [])
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            if "error" in result:
                print(f"{impl:9s} {size}^2 {n:>7,d}: {result['error']}")
                continue
            print(
                f"{impl:9s} {size:>4d}^2 {n:>7,d} Gaussians: {result['median_ms']:9.1f} ms "
                f"(min {result['min_ms']:.1f}, cpu {result['median_cpu_ms']:.1f} ms, "
                f"cpu/wall {result['cpu_over_wall']:.2f}, "
                f"{result['threads']} threads), peak RSS {result['peak_rss_mb']:.0f} MB",
                flush=True,
            )

    print(f"\nms per forward+backward (median), load average {os.getloadavg()[0]:.1f}")
    print(f"{'threads':>7s} {'config':>16s} {'compiled':>10s} {'torch':>10s} {'dense':>10s}")
    by_key = {
        (r["impl"], r["threads"], r["size"], r["n_gaussians"]): r
        for r in results
        if "error" not in r
    }
    for threads in sorted({key[1] for key in by_key}, reverse=True):
        for size, n in CONFIGS:
            row = [by_key.get((impl, threads, size, n)) for impl in ("compiled", "torch", "dense")]
            cells = [f"{r['median_ms']:10.1f}" if r else f"{'-':>10s}" for r in row]
            speedup = (
                f"  dense / compiled = {row[2]['median_ms'] / row[0]['median_ms']:.0f}x"
                if row[0] and row[2]
                else ""
            )
            print(f"{threads:>7d} {size:>5d}^2 {n:>9,d} {' '.join(cells)}{speedup}")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "benchmark": "rasterize_gaussians forward+backward, CPU",
            "machine": {
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
            },
            "results": results,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
