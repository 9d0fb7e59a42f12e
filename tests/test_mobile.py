"""iPhone bundles: export, manifest schema, validation, atomicity, Core ML packages and the
reference renderer against the trained models, for splat, lpgs and lightslab."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from snap3d.mobile import bundle as bundle_module
from snap3d.mobile import reference
from snap3d.mobile.bundle import export_bundle, read_manifest, schema, validate
from test_splat import tiny_scene

from snap3d.cli import main
from snap3d.errors import Snap3dError
from snap3d.io import load_spz, read_spz_header
from snap3d.metrics import psnr
from snap3d.render.video import load_train_cameras
from snap3d.train import TrainConfig, Trainer, get_method, load_model

FLOAT16_DB = 40.0
QUANTIZED_DB = 35.0


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return tiny_scene(tmp_path_factory.mktemp("mobile"))


def train(method: str, scene: Path, out: Path, steps: int, **model_kwargs) -> Path:
    cfg = TrainConfig(
        data=scene, output=out, max_steps=steps, progress=False, device="cpu", save_every=0
    )
    trainer = Trainer(method, get_method(method).config_cls(**model_kwargs), cfg)
    trainer.train()
    return out


def model_renders(run: Path, cameras) -> torch.Tensor:
    model, _, _ = load_model(run)
    with torch.no_grad():
        return model.render(cameras).rgb


def min_psnr(bundle_path: Path, run: Path, source: str = "auto") -> float:
    """Worst PSNR of the reference renderer against the trained model over a few training
    cameras and the default camera."""
    b = reference.load_bundle(bundle_path)
    worst = float("inf")
    for cams in (b.cameras("training")[:4], b.cameras("default")):
        got = reference.render(b, cams, source=source).rgb
        worst = min(worst, float(psnr(got, model_renders(run, cams)).min()))
    return worst


# -- splat ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splat_run(scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("splat-run") / "run"
    return train("splat", scene, out, 30, init_num_points=1500, sh_degree=1)


@pytest.fixture(scope="module")
def splat_bundle(splat_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("splat-bundle") / "scene.snap3d"
    return export_bundle(splat_run, out, zip=True, include_ply=True)


def test_splat_bundle_manifest_follows_the_schema_and_states_conventions(splat_bundle, splat_run):
    manifest = json.loads((splat_bundle / "manifest.json").read_text())
    jsonschema.Draft202012Validator(schema()).validate(manifest)
    assert manifest == validate(splat_bundle)
    assert manifest["format_version"] == 1 and manifest["representation"] == "splat"
    assert manifest["coordinates"]["camera"] == "opencv"
    assert manifest["units"]["angle"] == "radian" and "meters_per_unit" in manifest["units"]
    cfg = json.loads((splat_run / "config.json").read_text())
    assert manifest["render"] == {
        "background": cfg["scene"]["background"],
        "width": 32,
        "height": 32,
    }
    assert manifest["scene"]["bounds"] == cfg["scene"]["bounds"]
    assert len(manifest["cameras"]["training"]) == 12
    c2w = torch.tensor(manifest["cameras"]["default"]["camtoworld"])
    torch.testing.assert_close(c2w[:3, :3] @ c2w[:3, :3].T, torch.eye(3))
    roles = {a["role"]: a for a in manifest["assets"]}
    assert set(roles) == {"splats", "splats-ply"}
    for a in manifest["assets"]:
        data = (splat_bundle / a["path"]).read_bytes()
        assert a["bytes"] == len(data)
        assert a["sha256"] == hashlib.sha256(data).hexdigest()
    header = read_spz_header(splat_bundle / "scene.spz")
    assert header.version == 3 and roles["splats"]["spz"]["axes"] == "RUB"
    # gzip beats SPZ's 19 + 9 bytes per Gaussian (SH degree 1); the PLY holds 104
    assert roles["splats"]["bytes"] < 28 * header.num_points < roles["splats-ply"]["bytes"] / 3


def test_splat_bundle_is_morton_ordered_spz_of_the_trained_gaussians(splat_bundle, splat_run):
    model, _, _ = load_model(splat_run)
    splats = model.to_splats()
    ordered = splats.select(splats.morton_order())
    loaded = load_spz(splat_bundle / "scene.spz")
    # SPZ stores positions in steps of 2^-12 (RUB axes, converted back on load)
    torch.testing.assert_close(loaded.means, ordered.means, atol=2**-12, rtol=0)
    assert loaded.sh_degree == 1


def test_splat_reference_render_matches_the_trained_model(splat_bundle, splat_run):
    assert min_psnr(splat_bundle, splat_run) >= FLOAT16_DB


def test_splat_bundle_states_the_models_blur(splat_run, tmp_path):
    from snap3d.mobile.bake_splat import bake

    model, _, _ = load_model(splat_run)
    assert bake(model, tmp_path).blocks["gaussians"]["eps2d"] == pytest.approx(0.3)
    model.config.eps2d = 0.1
    assert bake(model, tmp_path).blocks["gaussians"]["eps2d"] == pytest.approx(0.1)


def test_zip_holds_the_same_files_and_validates(splat_bundle):
    archive = splat_bundle.with_name(splat_bundle.name + ".zip")
    with zipfile.ZipFile(archive) as z:
        assert z.namelist()[0] == "manifest.json"  # readers find it first
        names = sorted(z.namelist())
        files = sorted(p.relative_to(splat_bundle).as_posix() for p in splat_bundle.rglob("*"))
        assert names == files
        for name in names:
            assert z.read(name) == (splat_bundle / name).read_bytes()
    assert validate(archive) == validate(splat_bundle)


# -- validation -------------------------------------------------------------------------


def _missing(b: Path) -> str:
    (b / "scene.ply").unlink()
    return "scene.ply"


def _truncated(b: Path) -> str:
    data = (b / "scene.spz").read_bytes()
    (b / "scene.spz").write_bytes(data[: len(data) // 2])
    return "scene.spz"


def _tampered(b: Path) -> str:
    data = bytearray((b / "scene.ply").read_bytes())
    data[-5] ^= 0x01
    (b / "scene.ply").write_bytes(bytes(data))
    return "scene.ply"


def _malformed(b: Path) -> str:
    text = (b / "manifest.json").read_text()
    (b / "manifest.json").write_text(text[: len(text) // 2])
    return "manifest.json"


def _schema_broken(b: Path) -> str:
    manifest = json.loads((b / "manifest.json").read_text())
    del manifest["units"]
    manifest["assets"][0]["bytes"] = -1
    (b / "manifest.json").write_text(json.dumps(manifest))
    return "manifest.json"


def _newer(b: Path) -> str:
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["format_version"] = 2
    (b / "manifest.json").write_text(json.dumps(manifest))
    return "manifest.json"


def _stray(b: Path) -> str:
    (b / "extra.bin").write_bytes(b"x")
    return "extra.bin"


@pytest.mark.parametrize(
    "damage, words",
    [
        (_missing, "missing"),
        (_truncated, "truncated"),
        (_tampered, "checksum mismatch"),
        (_malformed, "invalid JSON at line"),
        (_schema_broken, "'units' is a required property"),
        (_newer, "format version 2 is newer"),
        (_stray, "not listed in the manifest"),
    ],
)
def test_validate_names_the_damaged_file(splat_bundle, tmp_path, capsys, damage, words):
    copy = tmp_path / "copy.snap3d"
    shutil.copytree(splat_bundle, copy)
    name = damage(copy)
    with pytest.raises(Snap3dError, match=words) as info:
        validate(copy)
    assert info.value.path == str(copy / name)
    with pytest.raises(SystemExit) as code:
        main(["bundle", "validate", str(copy)])
    assert code.value.code == 1
    assert str(copy / name) in capsys.readouterr().err


def test_validate_lists_several_problems_and_checks_zips(splat_bundle, tmp_path):
    copy = tmp_path / "copy.snap3d"
    shutil.copytree(splat_bundle, copy)
    _missing(copy)
    _truncated(copy)
    with pytest.raises(Snap3dError, match="2 problems") as info:
        validate(copy)
    assert "scene.ply" in str(info.value) and "scene.spz" in str(info.value)
    archive = tmp_path / "bad.snap3d.zip"
    with (
        zipfile.ZipFile(splat_bundle.with_name(splat_bundle.name + ".zip")) as z,
        zipfile.ZipFile(archive, "w") as out,
    ):
        for name in z.namelist():
            data = z.read(name)
            out.writestr(name, data[:-1] + bytes([data[-1] ^ 1]) if name == "scene.spz" else data)
    with pytest.raises(Snap3dError, match="checksum mismatch") as info:
        validate(archive)
    assert info.value.path.endswith("bad.snap3d.zip!/scene.spz")


def test_export_is_atomic(splat_run, tmp_path, monkeypatch):
    out = tmp_path / "exports" / "scene.snap3d"

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure after the assets were written")

    monkeypatch.setattr(bundle_module, "_manifest", fail)
    with pytest.raises(RuntimeError, match="injected"):
        export_bundle(splat_run, out, zip=True)
    assert list(out.parent.iterdir()) == []  # no bundle, no zip, no temporary folder
    monkeypatch.undo()
    export_bundle(splat_run, out)
    before = read_manifest(out)
    monkeypatch.setattr(bundle_module, "_manifest", fail)
    with pytest.raises(RuntimeError):
        export_bundle(splat_run, out, zip=True)
    assert read_manifest(out) == before and validate(out) == before  # the old one survives
    assert sorted(p.name for p in out.parent.iterdir()) == ["scene.snap3d"]
    monkeypatch.undo()
    other = tmp_path / "documents"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(Snap3dError, match="is not a bundle: refusing"):
        export_bundle(splat_run, other)
    assert (other / "keep.txt").read_text() == "mine"


def test_cli_exports_and_validates(splat_run, tmp_path, capsys):
    out = tmp_path / "cli.snap3d"
    main(["export", str(splat_run), "--format", "ios", "--output", str(out), "--zip"])
    assert out.is_dir() and out.with_name("cli.snap3d.zip").is_file()
    main(["bundle", "validate", str(out)])
    assert "ok:" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # SPZ is already quantized: no Core ML to compress
        main(
            [
                "export",
                str(splat_run),
                "--format",
                "ios",
                "--output",
                str(out),
                "--quantize",
                "int8",
            ]
        )


# -- networks (Core ML) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def lpgs_run(scene, tmp_path_factory) -> Path:
    pytest.importorskip("snap3d.representations.lpgs")
    out = tmp_path_factory.mktemp("lpgs-run") / "run"
    return train(
        "lpgs", scene, out, 12,
        init_num_parents=150, children=4, hidden_dim=16, hash_levels=4, hash_log2_size=10,
        hash_max_resolution=32,
    )  # fmt: skip


@pytest.fixture(scope="module")
def lightslab_run(scene, tmp_path_factory) -> Path:
    pytest.importorskip("snap3d.representations.lightslab")
    out = tmp_path_factory.mktemp("lightslab-run") / "run"
    return train(
        "lightslab", scene, out, 30,
        num_slabs_360=2, uv_resolution=4, st_resolution=16, num_levels=2, feature_dim=4,
        hidden_dim=16, rays_per_batch=1024, features_lr=5e-2, decoder_lr=1e-2,
    )  # fmt: skip


NETWORKS = {
    # representation: (quantized variant tested, raw tensor asset holding the network weights)
    "lpgs": ("int8", ("decoder.bin",)),
    "lightslab": ("palettize", ("planes.bin", "decoder.bin")),
}


@pytest.fixture(scope="module")
def network_bundles(tmp_path_factory):
    """rep -> (run, float16 bundle, quantized bundle), exported once per module."""
    cache: dict[str, tuple[Path, Path, Path]] = {}

    def get(rep: str, run: Path) -> tuple[Path, Path, Path]:
        if rep not in cache:
            folder = tmp_path_factory.mktemp(f"{rep}-bundles")
            plain = export_bundle(run, folder / "plain.snap3d")
            quantized = export_bundle(run, folder / "q.snap3d", quantize=NETWORKS[rep][0])
            cache[rep] = (run, plain, quantized)
        return cache[rep]

    return get


@pytest.fixture(params=list(NETWORKS))
def network(request, network_bundles):
    """(representation, run, float16 bundle, quantized bundle)."""
    pytest.importorskip("coremltools")
    run = request.getfixturevalue(f"{request.param}_run")
    return (request.param, *network_bundles(request.param, run))


def network_weights(manifest: dict, rep: str) -> list[str]:
    return [t["name"] for t in manifest["tensors"] if t["asset"] in NETWORKS[rep][1]]


def test_network_bundle_validates_and_renders_like_the_model(network):
    rep, run, plain, quantized = network
    manifest = validate(plain)
    jsonschema.Draft202012Validator(schema()).validate(manifest)
    assert manifest["representation"] == rep
    assert manifest["coreml"][0]["minimum_deployment_target"] == "iOS17"
    assert min_psnr(plain, run) >= FLOAT16_DB
    assert min_psnr(quantized, run) >= QUANTIZED_DB


def test_coreml_spec_declares_the_manifest_features(network):
    from snap3d.mobile.coreml import package_io

    _, _, plain, quantized = network
    for b in (plain, quantized):
        entry = read_manifest(b)["coreml"][0]
        declared = package_io(b / entry["asset"])
        for kind in ("inputs", "outputs"):
            strip = [{k: v for k, v in f.items() if k != "description"} for f in entry[kind]]
            if kind == "outputs":  # a spec gives outputs no range
                strip = [{k: v for k, v in f.items() if k != "range"} for f in strip]
            assert declared[kind] == strip


def test_coreml_weights_equal_the_trained_and_shipped_weights(network):
    from snap3d.mobile.coreml import COMPRESS_ABOVE, package_weights, weight_storage

    rep, run, plain, quantized = network
    trained = {k: v.detach() for k, v in load_model(run)[0].state_dict().items()}
    for b, exact in ((plain, True), (quantized, False)):
        bundle = reference.load_bundle(b)
        names = network_weights(bundle.manifest, rep)
        stored = package_weights(b / bundle.manifest["coreml"][0]["asset"], names)
        shipped = bundle_module.read_tensors(bundle)
        assert set(stored) == set(names)
        for name in names:
            package = stored[name].astype(np.float32).reshape(-1)
            raw = shipped[name].astype(np.float32).reshape(-1)
            assert shipped[name].dtype == np.float16
            np.testing.assert_array_equal(package, raw)  # Core ML and Metal see the same
            want = trained[name].half().float().reshape(-1).numpy()
            if exact:
                np.testing.assert_array_equal(package, want)
            else:  # compressed: near the trained weights, not equal to all of them
                scale = np.abs(want).max() + 1e-6
                assert np.abs(package - want).max() <= 0.1 * scale, name
    # the compressed package stores its large weights compressed, the plain one float16
    names = network_weights(read_manifest(plain), rep)
    package = read_manifest(plain)["coreml"][0]["asset"]
    assert set(weight_storage(plain / package, names).values()) == {"float16"}
    stored = weight_storage(quantized / package, names)
    mode = NETWORKS[rep][0]
    for name in names:
        big = trained[name].numel() > COMPRESS_ABOVE
        # palettizing leaves linear layers' weights float16
        linear = name.startswith("mlp.") and trained[name].dim() == 2
        compressed = big and not (mode == "palettize" and linear)
        assert stored[name] == (mode if compressed else "float16"), name
    assert NETWORKS[rep][0] in stored.values()


def test_lpgs_decoder_reproduces_the_models_children(lpgs_run):
    from snap3d.mobile.bake_lpgs import lpgs_parts

    model, _, _ = load_model(lpgs_run)
    spec, parents, weights = lpgs_parts(model)
    decoder = reference.ChildDecoder(spec, weights)
    with torch.no_grad():
        means, quats, scales, opacities, sh = decoder(
            *(parents[f"parents.{n}"] for n in ("features", "means", "log_sizes", "opacities"))
        )
        children = model.expand()
    torch.testing.assert_close(means.flatten(0, 1), children.means)
    torch.testing.assert_close(scales.flatten(0, 1), children.scales.exp())
    torch.testing.assert_close(opacities.flatten(), torch.sigmoid(children.opacities))
    torch.testing.assert_close(
        quats.flatten(0, 1), torch.nn.functional.normalize(children.quats, dim=-1)
    )
    torch.testing.assert_close(sh.flatten(0, 1), torch.cat([children.sh0, children.shN], 1))


def test_light_field_reproduces_the_models_rays(lightslab_run):
    from snap3d.mobile.bake_lightslab import lightslab_parts

    model, _, _ = load_model(lightslab_run)
    spec, weights = lightslab_parts(model)
    field = reference.LightSlabField(spec, weights)
    origins, directions = load_train_cameras(lightslab_run).rays(0)
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    with torch.no_grad():
        colour, alpha = field(origins, directions)
        want = model.render_rays(origins, directions)
    torch.testing.assert_close(alpha, want.alpha, atol=1e-5, rtol=0)
    rgb = torch.lerp(model.background.expand_as(colour), colour, alpha)
    torch.testing.assert_close(rgb, want.rgb, atol=1e-5, rtol=0)


def test_lpgs_fallback_spz_renders_the_children(lpgs_run, network_bundles):
    pytest.importorskip("coremltools")
    run, plain, _ = network_bundles("lpgs", lpgs_run)
    # SPZ's 8-bit attributes: a lower bound than the float16 decoder's
    assert min_psnr(plain, run, source="fallback") >= 30.0


def test_reference_renderer_reads_only_the_bundle(
    splat_bundle, lpgs_run, lightslab_run, network_bundles
):
    pytest.importorskip("coremltools")
    runs = {"lpgs": lpgs_run, "lightslab": lightslab_run}
    paths = [splat_bundle] + [network_bundles(rep, run)[1] for rep, run in runs.items()]
    code = (
        "import sys\n"
        "from snap3d.mobile import reference\n"
        f"for path in {[str(p) for p in paths]!r}:\n"
        "    b = reference.load_bundle(path)\n"
        "    reference.render(b, b.cameras('default'))\n"
        "bad = [m for m in sys.modules if m.startswith(('snap3d.representations', "
        "'snap3d.train', 'snap3d.data', 'coremltools'))]\n"
        "assert not bad, bad\n"
    )
    # the pure-torch rasterizer: a fresh process need not load the compiled one
    env = {**os.environ, "SNAP3D_NO_EXT": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
