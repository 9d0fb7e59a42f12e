"""The ``snap3d`` command line.

Each subcommand is a dataclass parsed by tyro. ``snap3d train METHOD`` merges the
trainer's flags with every field of the method's config, so ``--sh-degree`` and
``--max-steps`` sit side by side. Subcommands that belong to the optional parts
(viewer, mobile bundles) import them only when called.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from snap3d.errors import Snap3dError

COMMANDS = {
    "train": "train a method on a scene: snap3d train METHOD --data PATH",
    "eval": "evaluate a run on a split, print JSON and write renders",
    "render": "render a run along an orbit or a camera path (frames or mp4)",
    "export": "export a run (ply, splat, spz, lpgs, ios bundle, trajectory-video)",
    "view": "open a run, bundle or splat file in the web viewer",
    "demo": "train splats on the bundled 360 scene, evaluate, export, say how to view",
    "data": "data info PATH: describe a scene folder",
    "bundle": "bundle validate PATH: check an iPhone bundle",
}


@dataclass
class EvalArgs:
    run: tyro.conf.Positional[Path]
    """Run directory."""
    split: str = "test"
    data: Path | None = None
    """Scene folder; default the one the run was trained on."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    renders: bool = True
    """Write RUN/renders/<split>/<index>.png."""


@dataclass
class RenderArgs:
    run: tyro.conf.Positional[Path]
    orbit: int = 0
    """Render N frames on a circle around the scene at the training cameras' height."""
    camera_path: Path | None = None
    """JSON camera path: nerfstudio camera_path.json or {"camtoworlds": [...] (OpenCV),
    "Ks": [...], "width", "height"}."""
    time: float | None = None
    """Fixed time for dynamic scenes (default: sweep 0..1 along the path)."""
    output: Path | None = None
    """A .mp4 file or a folder of PNG frames; default RUN/render/orbit.mp4."""
    fps: int = 24
    width: int | None = None
    height: int | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


@dataclass
class ExportArgs:
    run: tyro.conf.Positional[Path]
    format: str = "ply"
    """ply | splat | spz | lpgs | ios | trajectory-video (depending on the method)."""
    output: Path | None = None
    zip: bool = False
    """ios: also write NAME.snap3d.zip."""
    quantize: Literal["none", "int8", "palettize"] = "none"
    """ios: Core ML weight compression."""
    camera: int = 0
    """trajectory-video: the test camera to film from."""
    camera_path: Path | None = None
    times: tuple[float, ...] = ()
    """trajectory-video: times to sample (default: the scene's frames)."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


@dataclass
class ViewArgs:
    path: tyro.conf.Positional[Path]
    """Run directory, iPhone bundle, or .ply/.spz/.splat file."""
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass
class DemoArgs:
    output: Path = Path("runs/demo")
    data: Path | None = None
    """Scene folder; default the bundled 360 object."""
    max_steps: int | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


@dataclass
class DataInfoArgs:
    path: tyro.conf.Positional[Path]


@dataclass
class BundleValidateArgs:
    path: tyro.conf.Positional[Path]


def _usage() -> str:
    lines = ["usage: snap3d COMMAND [ARGS]  (snap3d COMMAND --help for details)", ""]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def _train_cli(argv: list[str]) -> None:
    from snap3d.train import TrainConfig, Trainer, available_methods, get_method

    if not argv or argv[0].startswith("-"):
        methods = available_methods()
        print("usage: snap3d train METHOD --data PATH [options]\n\nmethods: " + ", ".join(methods))
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    spec = get_method(argv[0])
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    clash = train_names & {f.name for f in dataclasses.fields(spec.config_cls)}
    if clash:
        raise Snap3dError(f"method {spec.name!r} config fields clash with trainer flags: {clash}")
    args_cls = dataclasses.make_dataclass(
        f"Train{spec.config_cls.__name__}",
        [
            ("train", Annotated[TrainConfig, tyro.conf.OmitArgPrefixes], dataclasses.field(default_factory=TrainConfig)),
            ("model", Annotated[spec.config_cls, tyro.conf.OmitArgPrefixes], dataclasses.field(default_factory=spec.config_cls)),
        ],
    )  # fmt: skip
    args = tyro.cli(
        args_cls,
        args=argv[1:],
        prog=f"snap3d train {spec.name}",
        description=spec.description,
    )
    callbacks = []
    if args.train.viewer:
        from snap3d.viewers.live import live_viewer_callback

        callbacks.append(live_viewer_callback(port=args.train.viewer_port))
    trainer = Trainer(spec.name, args.model, args.train, callbacks=callbacks)
    trainer.setup()
    print(f"training {spec.name} on {trainer.train_data} -> {trainer.run_dir}")
    try:
        run_dir = trainer.train()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    result = trainer.run_eval(write_renders=True)
    if result is not None:
        print(json.dumps({k: v for k, v in result.items() if k != "per_image_psnr"}))
    print(f"run: {run_dir}")


def _eval(args: EvalArgs) -> None:
    from snap3d.data import load
    from snap3d.train import evaluate, load_model, resolve_device

    device = resolve_device(args.device)
    model, cfg, step = load_model(args.run, device)
    train_cfg = cfg["train"]
    data = args.data or Path(train_cfg["data"])
    dataset = load(
        data,
        split=args.split,
        downscale=train_cfg.get("downscale", 1.0),
        background=train_cfg.get("background", "white"),
    )
    render_dir = args.run / "renders" / args.split if args.renders else None
    result = evaluate(model, dataset, render_dir, device)
    result = {"method": cfg["method"], "step": step, "split": args.split, **result}
    print(json.dumps(result, indent=1))


def _data_info(args: DataInfoArgs) -> None:
    from snap3d.data import describe

    print(json.dumps(describe(args.path), indent=1))


def _dispatch(command: str, rest: list[str]) -> None:
    def parse(cls):
        return tyro.cli(cls, args=rest, prog=f"snap3d {command}")

    if command == "train":
        _train_cli(rest)
    elif command == "eval":
        _eval(parse(EvalArgs))
    elif command == "render":
        from snap3d.render.video import render_command

        render_command(parse(RenderArgs))
    elif command == "export":
        from snap3d.io.export import export_command

        export_command(parse(ExportArgs))
    elif command == "view":
        from snap3d.viewers import view_command

        view_command(parse(ViewArgs))
    elif command == "demo":
        from snap3d.demo import demo_command

        demo_command(parse(DemoArgs))
    elif command in ("data", "bundle"):
        sub = {
            "data": ("info", DataInfoArgs, _data_info),
            "bundle": ("validate", BundleValidateArgs, None),
        }
        name, cls, fn = sub[command]
        if not rest or rest[0] != name:
            raise Snap3dError(f"usage: snap3d {command} {name} PATH")
        rest = rest[1:]
        args = parse(cls)
        if fn is None:
            from snap3d.mobile.bundle import validate_command

            fn = validate_command
        fn(args)
    else:
        print(_usage(), file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        raise SystemExit(0 if argv else 2)
    try:
        _dispatch(argv[0], argv[1:])
    except Snap3dError as e:
        print(f"snap3d: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
