"""The ns-train plugins (methods/nerfstudio_plugin.py).

They need nerfstudio, which lives in an environment of its own: scripts/test_nerfstudio.sh
creates .venv-ns and runs this file there. Elsewhere the module is skipped, with the
reason, when nerfstudio does not import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip(
    "nerfstudio",
    reason="nerfstudio is not installed here; scripts/test_nerfstudio.sh runs these tests in .venv-ns",
)

from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig  # noqa: E402
from nerfstudio.models.base_model import ModelConfig  # noqa: E402
from nerfstudio.plugins.registry import discover_methods  # noqa: E402
from nerfstudio.utils.eval_utils import eval_setup  # noqa: E402
from snap3d.methods import nerfstudio_plugin as plugin  # noqa: E402

from snap3d.cli import main as snap3d_main  # noqa: E402
from snap3d.data import load  # noqa: E402
from snap3d.errors import Snap3dError  # noqa: E402
from snap3d.train import get_method, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OBJECT360 = ROOT / "assets" / "object360"
METHODS = ("splat", "lpgs", "lightslab")
STEPS = 20


def test_the_three_methods_register():
    methods, descriptions = discover_methods()
    for name in METHODS:
        config = methods[f"snap3d-{name}"]
        assert isinstance(config, plugin.Snap3dTrainerConfig)
        assert config.pipeline.model.method == name
        assert descriptions[f"snap3d-{name}"].startswith("snap3d: ")


@pytest.mark.parametrize(("name", "field", "value"), [("splat", "sh_degree", 1), ("lpgs", "children", 3), ("lightslab", "hidden_dim", 7)])  # fmt: skip
def test_model_config_mixes_in_the_method_config(name, field, value):
    model = discover_methods()[0][f"snap3d-{name}"].pipeline.model
    ours = get_method(name).config_cls
    # a field in both would give one value two meanings
    assert not {f.name for f in dataclasses.fields(ModelConfig)} & {
        f.name for f in dataclasses.fields(ours)
    }
    assert model.snap3d_config() == ours()
    assert dataclasses.replace(model, **{field: value}).snap3d_config() == ours(**{field: value})


def test_lightslab_refuses_what_ray_batches_cannot_train():
    with pytest.raises(Snap3dError, match="snap3d train lightslab"):
        plugin.LightSlabModelConfig(decoder="conv")


def test_cameras_match_snap3d_loader_and_nerfstudio_rays():
    """nerfstudio's Blender cameras, converted, equal snap3d's own reading of the scene,
    and give the rays nerfstudio generates (pixel centres, unit directions)."""
    outputs = BlenderDataParserConfig(data=OBJECT360).setup().get_dataparser_outputs("train")
    cams = plugin.snap3d_cameras(outputs.cameras)
    ours = load(OBJECT360, split="train")
    index = {source.path: i for i, source in enumerate(ours.sources)}
    order = [index[Path(p)] for p in outputs.image_filenames]
    torch.testing.assert_close(cams.camtoworlds, ours.cameras.camtoworlds[order], atol=1e-5, rtol=0)
    torch.testing.assert_close(cams.Ks, ours.cameras.Ks[order], atol=1e-4, rtol=0)
    assert (cams.width, cams.height, cams.camera_model) == (128, 128, "PINHOLE")
    for i in (0, 7):
        bundle = outputs.cameras.generate_rays(camera_indices=i, keep_shape=True)
        origins, directions = cams.rays(i)
        torch.testing.assert_close(origins, bundle.origins, atol=1e-5, rtol=0)
        torch.testing.assert_close(directions, bundle.directions, atol=1e-5, rtol=0)


@pytest.fixture(scope="module", params=METHODS)
def ns_run(request, tmp_path_factory) -> tuple[str, Path]:
    """(method, nerfstudio run directory) after ns-train on the bundled 360 scene on CPU."""
    name = request.param
    out = tmp_path_factory.mktemp(f"ns-{name}")
    command = [
        str(Path(sys.executable).with_name("ns-train")),
        f"snap3d-{name}",
        "--data", str(OBJECT360),
        "--max-num-iterations", str(STEPS),
        "--machine.device-type", "cpu",
        "--vis", "tensorboard",
        "--output-dir", str(out),
        "blender-data",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=out, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (run,) = (out / "object360" / f"snap3d-{name}").iterdir()
    return name, run


def test_ns_train_writes_a_run_snap3d_eval_reads(ns_run):
    name, run = ns_run
    assert len(list((run / "nerfstudio_models").glob("step-*.ckpt"))) == 1
    snap3d_run = run / plugin.RUN_SUBDIR
    model, config, step = load_model(snap3d_run)
    assert (config["method"], step, config["train"]["max_steps"]) == (name, STEPS, STEPS)
    assert type(model) is get_method(name).model_cls

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        snap3d_main(["eval", str(snap3d_run), "--data", str(OBJECT360), "--device", "cpu", "--no-renders"])  # fmt: skip
    result = json.loads(stdout.getvalue())
    assert (result["method"], result["step"], result["num_images"]) == (name, STEPS, 20)
    # the scene written beside the run (the dataparser's frame and splits) agrees
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        snap3d_main(["eval", str(snap3d_run), "--device", "cpu", "--no-renders"])
    assert json.loads(stdout.getvalue())["psnr"] == pytest.approx(result["psnr"], abs=1e-3)

    # ns-eval's path (also the viewer's and ns-render's: get_outputs_for_camera) renders
    # the same model from nerfstudio's checkpoint
    _, pipeline, _, ns_step = eval_setup(run / "config.yml", test_mode="test")
    assert ns_step == STEPS - 1
    ns_metrics = pipeline.get_average_eval_image_metrics()
    print(f"{name}: test PSNR ns-eval {ns_metrics['psnr']:.4f}, snap3d eval {result['psnr']:.4f}")
    assert ns_metrics["psnr"] == pytest.approx(result["psnr"], abs=0.05)


# per method: the formats `snap3d export` writes from an ns-train run (ios: an iPhone
# bundle, baked with Core ML for lpgs and lightslab: .venv-ns has the mobile extra)
EXPORTS = {"splat": ("spz", "ios"), "lpgs": ("lpgs",), "lightslab": ("ios",)}


def test_snap3d_export_reads_an_ns_train_run(ns_run, tmp_path):
    from snap3d.io import load_splats
    from snap3d.io.lpgs import load_lpgs

    name, run = ns_run
    snap3d_run = run / plugin.RUN_SUBDIR
    model, _, _ = load_model(snap3d_run)
    for fmt in EXPORTS[name]:
        out = tmp_path / f"{name}.{fmt}"
        if fmt == "ios":
            pytest.importorskip("coremltools", reason="the mobile extra is not installed")
            out = tmp_path / f"{name}.snap3d"
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            snap3d_main(["export", str(snap3d_run), "--format", fmt, "--output", str(out), "--device", "cpu"])  # fmt: skip
        assert stdout.getvalue().startswith(f"wrote {out}")
        if fmt == "spz":
            assert load_splats(out).means.shape[0] == model.num_gaussians
        elif fmt == "lpgs":
            assert load_lpgs(out).num_parents == model.num_parents
        else:
            from snap3d.mobile.bundle import validate

            manifest = validate(out)
            assert manifest["representation"] == name
            assert manifest["source"] == {"method": name, "step": STEPS, "run": "snap3d"}
