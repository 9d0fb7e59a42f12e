"""``snap3d export``: write a trained run in a format other tools read."""

from __future__ import annotations

from pathlib import Path

from snap3d.errors import Snap3dError
from snap3d.io import save_splats

SPLAT_FORMATS = ("ply", "splat", "spz")


def export_run(
    run_dir: Path, fmt: str, output: Path | None = None, device: str = "cpu", **options
) -> Path:
    """Export a trained run; returns the path written.

    ``ply``, ``splat`` and ``spz`` work for every splat-based method (models with
    ``to_splats``); ``ios`` writes an iPhone bundle (snap3d.mobile); other formats are
    the method's own (``model.export(fmt, output, **options)``).
    """
    from snap3d.train import load_model

    run_dir = Path(run_dir)
    model, cfg, _ = load_model(run_dir, device)
    method = cfg["method"]
    if fmt == "ios":
        from snap3d.mobile.bundle import export_bundle

        out = output or run_dir / "exports" / f"{run_dir.name}.snap3d"
        return export_bundle(run_dir, out, **options)
    suffix = {"trajectory-video": ".npz"}.get(fmt, f".{fmt}")
    out = Path(output) if output else run_dir / "exports" / f"{method}{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt in SPLAT_FORMATS:
        if not hasattr(model, "to_splats"):
            raise Snap3dError(
                f"{method} runs cannot be written as Gaussian splats (.{fmt})", run_dir
            )
        save_splats(out, model.to_splats())
        return out
    exporter = getattr(model, "export", None)
    if exporter is None:
        raise Snap3dError(f"{method} runs export to {', '.join(SPLAT_FORMATS)} or ios, not {fmt!r}")
    return exporter(fmt, out, **options)


def export_command(args) -> None:
    from snap3d.train import resolve_device

    options = {}
    if args.format == "ios":
        options = {"zip": args.zip, "quantize": args.quantize}
    elif args.format == "trajectory-video":
        options = {"camera": args.camera, "camera_path": args.camera_path, "times": args.times}
    out = export_run(
        args.run, args.format, args.output, str(resolve_device(args.device)), **options
    )
    size = (
        sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        if out.is_dir()
        else out.stat().st_size
    )
    print(f"wrote {out} ({size / 1e6:.2f} MB)")
