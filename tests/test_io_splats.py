"""Tests for snap3d.io: SplatData, atomic writing, and the PLY, .splat and SPZ codecs."""

from __future__ import annotations

import gzip
import math
import os
import struct

import numpy as np
import pytest
import torch

from snap3d.errors import Snap3dError
from snap3d.io import (
    SH_C0,
    SplatData,
    atomic_dir,
    atomic_write,
    load_ply,
    load_splat,
    load_splats,
    load_spz,
    read_spz_header,
    save_ply,
    save_splat,
    save_splats,
    save_spz,
)


def random_splats(n: int, degree: int, seed: int = 0) -> SplatData:
    """Random Gaussians whose values lie inside every format's representable range."""
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return SplatData(
        means=torch.randn(n, 3, generator=g) * 3,
        quats=torch.randn(n, 4, generator=g),
        scales=torch.rand(n, 3, generator=g) * 8 - 9,
        opacities=torch.randn(n, generator=g) * 3,
        sh0=torch.rand(n, 1, 3, generator=g) * 6 - 3,
        shN=torch.rand(n, k, 3, generator=g) * 1.8 - 0.9,
    )


def unit(q: torch.Tensor) -> torch.Tensor:
    return q / q.norm(dim=1, keepdim=True)


def rotation_angle(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """[N] angle in radians between the rotations of two [N, 4] quaternion sets."""
    dot = (unit(q1.double()) * unit(q2.double())).sum(dim=1).abs().clamp(max=1)
    return 2 * torch.acos(dot)


def assert_same(a: SplatData, b: SplatData) -> None:
    for name, tensor in a.to_dict().items():
        assert torch.equal(tensor, b.to_dict()[name]), name


# SplatData


def test_splat_data_properties_and_dict_round_trip():
    splats = random_splats(5, 2)
    assert splats.num == 5 and splats.sh_degree == 2
    assert set(splats.to_dict()) == {"means", "quats", "scales", "opacities", "sh0", "shN"}
    ckpt = {**splats.to_dict(), "step": torch.tensor(3)}
    assert_same(SplatData.from_dict(ckpt), splats)
    assert_same(splats.to("cpu"), splats)
    with pytest.raises(Snap3dError, match="lacks scales, opacities, sh0, shN"):
        SplatData.from_dict({"means": splats.means, "quats": splats.quats})


def test_splat_data_select():
    splats = random_splats(6, 1)
    mask = torch.tensor([True, False, True, False, False, True])
    picked = splats.select(mask)
    assert picked.num == 3 and torch.equal(picked.shN, splats.shN[mask])
    by_index = splats.select(torch.tensor([5, 0]))
    assert torch.equal(by_index.means, splats.means[[5, 0]])


def test_validate_shapes_dtype_and_nan():
    splats = random_splats(4, 1)
    splats.validate()
    bad = SplatData(**{**splats.to_dict(), "quats": splats.quats[:, :3]})
    with pytest.raises(Snap3dError, match=r"scene.ply: quats has shape \(4, 3\)"):
        bad.validate("scene.ply")
    with pytest.raises(Snap3dError, match="shN has shape"):
        SplatData(**{**splats.to_dict(), "shN": torch.zeros(4, 5, 3)}).validate()
    with pytest.raises(Snap3dError, match="float64"):
        SplatData(**{**splats.to_dict(), "scales": splats.scales.double()}).validate()
    nan = splats.opacities.clone()
    nan[2] = float("nan")
    with pytest.raises(Snap3dError, match=r"opacities has NaN.*\(first: Gaussian 2\)"):
        SplatData(**{**splats.to_dict(), "opacities": nan}).validate()


def test_morton_order_hand_computed():
    # The point at (4, 4, 4) makes the bounding cube [0, 4]^3, so with 2 bits per axis
    # the quantised coordinates are the integer coordinates (4 clamped to 3), and the
    # code interleaves ... z1 y1 x1 z0 y0 x0.
    points = {
        "A": ((1, 0, 0), 0b000001),
        "B": ((2, 0, 0), 0b001000),
        "C": ((0, 1, 0), 0b000010),
        "D": ((0, 0, 3), 0b100100),
        "E": ((4, 4, 4), 0b111111),
        "F": ((0, 0, 0), 0b000000),
        "G": ((1, 1, 1), 0b000111),
        "H": ((2, 1, 0), 0b001010),
    }
    names = list(points)
    splats = random_splats(len(names), 0)
    splats.means = torch.tensor([points[name][0] for name in names], dtype=torch.float32)
    order = splats.morton_order(bits=2)
    assert [names[i] for i in order] == ["F", "A", "C", "G", "B", "H", "D", "E"]
    assert sorted(points[name][1] for name in names) == [points[names[i]][1] for i in order]


# atomic writing


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    target = tmp_path / "scene.ply"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_write(target) as f:
            f.write(b"new, half written")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["scene.ply"]

    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["scene.ply"]


def test_atomic_write_missing_folder(tmp_path):
    with pytest.raises(Snap3dError, match="does not exist"):
        with atomic_write(tmp_path / "nope" / "a.bin"):
            pass


def test_atomic_dir(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(bundle) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError
    assert os.listdir(bundle) == ["old.txt"]
    assert os.listdir(tmp_path) == ["bundle"]

    with atomic_dir(bundle) as tmp:
        (tmp / "new.txt").write_text("new")
        save_ply(tmp / "splats.ply", random_splats(3, 0))
    assert sorted(os.listdir(bundle)) == ["new.txt", "splats.ply"]
    assert os.listdir(tmp_path) == ["bundle"]


# PLY


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip_exact(tmp_path, degree):
    splats = random_splats(50, degree, seed=degree)
    save_ply(tmp_path / "s.ply", splats)
    assert_same(load_ply(tmp_path / "s.ply"), splats)


def test_ply_layout_is_inria(tmp_path):
    splats = random_splats(2, 1)
    save_ply(tmp_path / "s.ply", splats)
    data = (tmp_path / "s.ply").read_bytes()
    header, body = data.split(b"end_header\n")
    names = [line.split()[-1] for line in header.decode().splitlines() if line.startswith("prop")]
    rest = [f"f_rest_{i}" for i in range(9)]
    assert names == [
        *["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity"],
        *["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"],
    ]
    assert len(body) == 2 * 4 * 26
    row = np.frombuffer(body, "<f4").reshape(2, 26)[1]
    # f_rest is channel-major: the 3 red coefficients, then green, then blue.
    assert np.array_equal(row[9:18], splats.shN[1].T.reshape(-1).numpy())
    assert np.array_equal(row[22:26], splats.quats[1].numpy())


def test_ply_reads_gsplat_export(tmp_path):
    from gsplat.exporter import export_splats

    splats = random_splats(20, 3)
    export_splats(**splats.to_dict(), format="ply", save_to=str(tmp_path / "g.ply"))
    assert_same(load_ply(tmp_path / "g.ply"), splats)


def test_ply_ascii_any_order_and_types(tmp_path):
    header = [
        "ply",
        "format ascii 1.0",
        "comment made by hand",
        "element camera 1",
        "property float fov",
        "element vertex 2",
        *[f"property double {n}" for n in ["rot_0", "rot_1", "rot_2", "rot_3", "opacity"]],
        *[f"property float scale_{i}" for i in range(3)],
        "property uchar flag",
        *[f"property double f_dc_{i}" for i in range(3)],
        *[f"property float {n}" for n in "zyx"],
        "end_header",
    ]
    rows = [
        "0.5",
        "1 0 0 0 -2   -1 -2 -3 7  0.1 0.2 0.3  3 2 1",
        "0 1 0 0 0.5  -4 -5 -6 0  -0.1 0 1.5  -3 -2 -1",
    ]
    (tmp_path / "a.ply").write_text("\n".join(header + rows) + "\n")
    splats = load_ply(tmp_path / "a.ply")
    assert splats.sh_degree == 0
    assert torch.equal(splats.means, torch.tensor([[1.0, 2, 3], [-1, -2, -3]]))
    assert torch.equal(splats.quats, torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]]))
    assert torch.equal(splats.opacities, torch.tensor([-2.0, 0.5]))
    assert torch.equal(splats.scales[1], torch.tensor([-4.0, -5, -6]))
    assert torch.allclose(splats.sh0[0, 0], torch.tensor([0.1, 0.2, 0.3]))


def test_ply_binary_big_endian_doubles(tmp_path):
    splats = random_splats(4, 1)
    a = {k: v.double().numpy() for k, v in splats.to_dict().items()}
    names = [
        *["rot_0", "rot_1", "rot_2", "rot_3", "x", "y", "z", "opacity"],
        *["scale_0", "scale_1", "scale_2", "f_dc_0", "f_dc_1", "f_dc_2"],
        *[f"f_rest_{i}" for i in range(9)],
    ]
    columns = np.concatenate(
        [
            a["quats"],
            a["means"],
            a["opacities"][:, None],
            a["scales"],
            a["sh0"][:, 0],
            a["shN"].transpose(0, 2, 1).reshape(4, 9),
        ],
        axis=1,
    )
    header = "ply\nformat binary_big_endian 1.0\nelement vertex 4\n"
    header += "".join(f"property double {n}\n" for n in names) + "end_header\n"
    (tmp_path / "b.ply").write_bytes(header.encode() + columns.astype(">f8").tobytes())
    assert_same(load_ply(tmp_path / "b.ply"), splats)


# antimatter15 .splat


def test_splat_round_trip_within_quantisation(tmp_path):
    splats = random_splats(300, 2)
    save_splat(tmp_path / "s.splat", splats, sort=False)
    assert (tmp_path / "s.splat").stat().st_size == 300 * 32
    back = load_splat(tmp_path / "s.splat")
    assert back.sh_degree == 0 and back.shN.shape == (300, 0, 3)
    assert torch.equal(back.means, splats.means)
    assert (back.scales - splats.scales).abs().max() <= 2e-6
    rgb = (0.5 + SH_C0 * splats.sh0).clamp(0, 1)
    assert ((0.5 + SH_C0 * back.sh0) - rgb).abs().max() <= 0.5 / 255 + 1e-6
    alpha_error = (torch.sigmoid(back.opacities) - torch.sigmoid(splats.opacities)).abs()
    assert alpha_error.max() <= 0.5 / 255 + 1e-6
    # Components round to 1/128 steps, except that +1 (byte 256) clamps to 127/128.
    q = unit(splats.quats.double())
    bound = torch.clamp(q - 127 / 128, min=0.5 / 128)
    assert ((back.quats.double() - q).abs() <= bound + 1e-7).all()


def test_splat_record_bytes_and_importance_order(tmp_path):
    splats = SplatData(
        means=torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
        quats=torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]),
        scales=torch.tensor([[0.0, math.log(0.5), math.log(2.0)], [-5.0, -5.0, -5.0]]),
        opacities=torch.tensor([0.0, 5.0]),
        sh0=torch.tensor([[[0.0, 0.5 / SH_C0, -2.0]]] * 2),
        shN=torch.zeros(2, 3, 3),
    )
    save_splat(tmp_path / "s.splat", splats)
    data = (tmp_path / "s.splat").read_bytes()
    # The first Gaussian is larger (volume 1 * opacity 0.5 > e^-15 * 0.99), so it comes first.
    assert data[:32] == struct.pack("<6f", 1, 2, 3, 1, 0.5, 2) + bytes(
        [128, 255, 0, 128, 255, 128, 128, 128]
    )
    assert data[60:64] == bytes([128, 128, 128, 0])
    back = load_splat(tmp_path / "s.splat")
    assert torch.equal(back.means, splats.means)

    many = random_splats(100, 0)
    save_splat(tmp_path / "m.splat", many)
    importance = many.scales.double().sum(dim=1).exp() * torch.sigmoid(many.opacities.double())
    expected = torch.argsort(importance, descending=True)
    assert torch.equal(load_splat(tmp_path / "m.splat").means, many.means[expected])


# SPZ


def spz_stream(path) -> bytes:
    return gzip.decompress(path.read_bytes())


@pytest.mark.parametrize("version", [3, 2])
@pytest.mark.parametrize("degree", [0, 3])
def test_spz_round_trip_within_quantisation(tmp_path, version, degree):
    splats = random_splats(400, degree, seed=version)
    save_spz(tmp_path / "s.spz", splats, version=version)
    stream = spz_stream(tmp_path / "s.spz")
    k = (degree + 1) ** 2 - 1
    assert len(stream) == 16 + 400 * (9 + 1 + 3 + 3 + (4 if version == 3 else 3) + 3 * k)
    back = load_spz(tmp_path / "s.spz")
    assert back.sh_degree == degree

    assert (back.means - splats.means).abs().max() <= 2.0**-12 / 2
    assert (back.scales - splats.scales).abs().max() <= 1 / 32 + 1e-6
    alpha_error = (torch.sigmoid(back.opacities) - torch.sigmoid(splats.opacities)).abs()
    assert alpha_error.max() <= 0.5 / 255 + 1e-6
    assert (back.sh0 - splats.sh0).abs().max() <= 0.5 / (0.15 * 255) + 1e-6
    # SH: round to 1/128, then to a bucket of 8 (degree 1) or 16 (degrees 2, 3) steps.
    buckets = torch.tensor([8] * 3 + [16] * 12)[:k, None]
    assert ((back.shN - splats.shN).abs() <= (buckets / 2 + 0.5) / 128 + 1e-6).all()

    # Rotations: the stored components are off by at most d each; the derived one by
    # at most e (v3: the largest, >= 1/2) or, v2, by sqrt(e) or e / w (w = 0 is worst).
    q = unit(splats.quats.double())
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
    if version == 3:
        d = math.sqrt(0.5) / 511 / 2
        derived_error = torch.full((400,), 3 * d)
    else:
        d = 0.5 / 127.5
        e = 2 * math.sqrt(3) * d + 3 * d**2
        derived_error = torch.minimum(torch.full((400,), math.sqrt(e)), e / q[:, 0])
    bound = 2 * torch.sqrt(3 * d**2 + derived_error**2)
    assert (rotation_angle(back.quats, splats.quats) <= bound + 1e-6).all()
    if version == 3:
        assert rotation_angle(back.quats, splats.quats).max() < 0.005


def test_spz_hand_built_stream(tmp_path):
    # Two Gaussians, SH degree 1, version 3, 12 fractional bits, antialiased, bytes by hand.
    header = struct.pack("<IIIBBBB", 0x5053474E, 3, 2, 1, 12, 0x1, 0)
    positions = bytes.fromhex(
        "001000 00f8ff 010000"  # 4096, -2048, 1 -> (1, -0.5, 1/4096)
        "00dcff 000000 003000"  # -9216, 0, 12288 -> (-2.25, 0, 3)
    )
    alphas = bytes([255, 51])
    colors = bytes([128, 255, 0, 64, 191, 127])
    scales = bytes([160, 0, 255, 144, 176, 96])
    rotations = bytes.fromhex(
        "000000c0"  # largest w (index 3), others 0: identity
        "00c80e00"  # largest x (index 0); y: 0, z: sign 1 | 434, w: 0
    )
    sh = bytes([128, 128, 128, 192, 192, 192, 64, 64, 64, 0, 255, 136, *[128] * 6])
    stream = header + positions + alphas + colors + scales + rotations + sh
    (tmp_path / "hand.spz").write_bytes(gzip.compress(stream))

    assert read_spz_header(tmp_path / "hand.spz") == (3, 2, 1, 12, True)
    raw = load_spz(tmp_path / "hand.spz", axes="RDF")
    assert torch.equal(raw.means, torch.tensor([[1.0, -0.5, 1 / 4096], [-2.25, 0, 3]]))
    logit_1019 = math.log(1019)  # alpha byte 255 decodes to 1 - 1/1020
    assert torch.allclose(raw.opacities, torch.tensor([logit_1019, math.log(0.2 / 0.8)]))
    assert torch.allclose(
        raw.sh0[:, 0],
        (torch.tensor([[128, 255, 0], [64, 191, 127]]) / 255 - 0.5) / 0.15,
    )
    assert torch.equal(raw.scales, torch.tensor([[0.0, -10, 5.9375], [-1, 1, -4]]))
    z = math.sqrt(0.5) * 434 / 511
    expected_quats = torch.tensor([[1.0, 0, 0, 0], [0, math.sqrt(1 - z * z), 0, -z]])
    assert torch.allclose(raw.quats, expected_quats, atol=1e-7)
    expected_sh = torch.tensor(
        [
            [[0, 0, 0], [0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]],
            [[-1, 127 / 128, 1 / 16], [0] * 3, [0] * 3],
        ]
    )
    assert torch.equal(raw.shN, expected_sh)

    # The file's RUB axes -> snap3d's RDF: negate y and z of positions and quaternion
    # vectors, and the degree-1 SH coefficients in y and z (the first two).
    ours = load_spz(tmp_path / "hand.spz")
    flip = torch.tensor([1.0, -1, -1])
    assert torch.equal(ours.means, raw.means * flip)
    assert torch.equal(ours.quats, raw.quats * torch.tensor([1.0, 1, -1, -1]))
    assert torch.equal(ours.shN, raw.shN * torch.tensor([-1.0, -1, 1])[:, None])
    assert torch.equal(ours.scales, raw.scales) and torch.equal(ours.sh0, raw.sh0)

    # Re-encoding the decoded Gaussians gives back the same bytes.
    save_spz(tmp_path / "again.spz", ours, antialiased=True)
    assert spz_stream(tmp_path / "again.spz") == stream


def test_spz_v2_rotation_bytes(tmp_path):
    quats = torch.tensor([[0.8, 0.0, -0.6, 0.0], [-0.8, 0.0, -0.6, 0.0]])
    splats = SplatData(
        means=torch.zeros(2, 3),
        quats=quats,
        scales=torch.zeros(2, 3),
        opacities=torch.zeros(2),
        sh0=torch.zeros(2, 1, 3),
        shN=torch.zeros(2, 0, 3),
    )
    save_spz(tmp_path / "v2.spz", splats, version=2, axes="RDF")
    stream = spz_stream(tmp_path / "v2.spz")
    # (x, y, z) with w >= 0, as round(127.5 * c + 127.5): y = -0.6 -> 51, y = +0.6 -> 204.
    assert stream[16 + 2 * 16 :] == bytes([128, 51, 128, 128, 204, 128])
    back = load_spz(tmp_path / "v2.spz", axes="RDF")
    # Zero is not representable: byte 128 decodes to 0.5 / 127.5.
    x, y = 128 / 127.5 - 1, 51 / 127.5 - 1
    w = math.sqrt(1 - x * x - y * y - x * x)
    assert torch.allclose(back.quats[0], torch.tensor([w, x, y, x]))


def test_ply_to_spz_to_load(tmp_path):
    splats = random_splats(200, 3, seed=7)
    save_splats(tmp_path / "s.ply", splats)
    save_splats(tmp_path / "s.spz", load_splats(tmp_path / "s.ply"))
    back = load_splats(tmp_path / "s.spz")
    assert (back.means - splats.means).abs().max() <= 2.0**-13
    assert (back.shN - splats.shN).abs().max() <= 8.5 / 128 + 1e-6
    assert rotation_angle(back.quats, splats.quats).max() < 0.005
    # Stored in RUB: the file's y of every position is minus ours.
    stream = spz_stream(tmp_path / "s.spz")
    raw = np.frombuffer(stream, np.uint8, count=200 * 9, offset=16).reshape(200, 3, 3)
    y = raw[:, 1].astype(np.int32) @ np.array([1, 256, 65536])
    y = np.where(y >= 1 << 23, y - (1 << 24), y) / 4096
    assert np.allclose(y, -splats.means[:, 1].numpy(), atol=2.0**-13)


def test_spz_positions_out_of_range(tmp_path):
    splats = random_splats(3, 0)
    splats.means[1, 2] = 5000.0
    with pytest.raises(Snap3dError, match="fractional_bits"):
        save_spz(tmp_path / "far.spz", splats)
    assert not (tmp_path / "far.spz").exists()
    save_spz(tmp_path / "far.spz", splats, fractional_bits=8)
    assert read_spz_header(tmp_path / "far.spz").fractional_bits == 8
    assert (load_spz(tmp_path / "far.spz").means - splats.means).abs().max() <= 2.0**-9


# errors


def test_errors_name_the_file(tmp_path):
    splats = random_splats(10, 1)
    for ext in ("ply", "splat", "spz"):
        with pytest.raises(Snap3dError, match=f"missing.{ext}: file not found"):
            load_splats(tmp_path / f"missing.{ext}")
        save_splats(tmp_path / f"s.{ext}", splats)
        data = (tmp_path / f"s.{ext}").read_bytes()
        (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) - 7])
        with pytest.raises(Snap3dError, match=f"cut.{ext}: (truncated|corrupt or truncated)"):
            load_splats(tmp_path / f"cut.{ext}")
    with pytest.raises(Snap3dError, match="unknown splat file extension '.obj'"):
        load_splats(tmp_path / "a.obj")
    assert load_splats(tmp_path / "s.ply").num == 10
    os.replace(tmp_path / "s.ply", tmp_path / "UPPER.PLY")
    assert load_splats(tmp_path / "UPPER.PLY").num == 10


def test_spz_stream_errors(tmp_path):
    def write(name: str, stream: bytes) -> str:
        (tmp_path / name).write_bytes(gzip.compress(stream))
        return str(tmp_path / name)

    good = struct.pack("<IIIBBBB", 0x5053474E, 3, 1, 0, 12, 0, 0) + bytes(20)
    assert load_spz(write("good.spz", good)).num == 1
    with pytest.raises(Snap3dError, match="bad.spz: wrong magic 0x12345678"):
        load_spz(write("bad.spz", struct.pack("<I", 0x12345678) + good[4:]))
    for version in (1, 4):
        stream = good[:4] + struct.pack("<I", version) + good[8:]
        with pytest.raises(Snap3dError, match=f"SPZ version {version} is not supported"):
            load_spz(write("v.spz", stream))
    with pytest.raises(Snap3dError, match="announces 1 Gaussians"):
        load_spz(write("short.spz", good[:-1]))
    with pytest.raises(Snap3dError, match="SH degree 4"):
        load_spz(write("deg4.spz", good[:12] + bytes([4]) + good[13:]))
    with pytest.raises(Snap3dError, match="extensions"):
        load_spz(write("ext.spz", good[:14] + bytes([0x2]) + good[15:]))
    with pytest.raises(Snap3dError, match="not an SPZ file"):
        (tmp_path / "plain.spz").write_bytes(good[4:])
        load_spz(tmp_path / "plain.spz")

    compressed = bytearray(gzip.compress(good + bytes(range(256)) * 4))
    compressed[len(compressed) // 2] ^= 0xFF
    (tmp_path / "corrupt.spz").write_bytes(bytes(compressed))
    with pytest.raises(Snap3dError, match="corrupt.spz: corrupt or truncated gzip"):
        load_spz(tmp_path / "corrupt.spz")


def test_ply_errors(tmp_path):
    (tmp_path / "magic.ply").write_bytes(b"plx\nformat ascii 1.0\nend_header\n")
    with pytest.raises(Snap3dError, match="magic.ply: not a PLY file"):
        load_ply(tmp_path / "magic.ply")

    rest = "".join(f"property float f_rest_{i}\n" for i in range(10))
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    names += ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    props = "".join(f"property float {n}\n" for n in names)
    text = f"ply\nformat ascii 1.0\nelement vertex 1\n{props}{rest}end_header\n"
    (tmp_path / "count.ply").write_text(text + " ".join(["0"] * 24) + "\n")
    with pytest.raises(Snap3dError, match="count.ply: wrong property count: 10 f_rest"):
        load_ply(tmp_path / "count.ply")
    text = f"ply\nformat ascii 1.0\nelement vertex 1\n{props}end_header\n"
    (tmp_path / "row.ply").write_text(text + " ".join(["0"] * 13) + "\n")
    with pytest.raises(Snap3dError, match="row.ply: wrong property count"):
        load_ply(tmp_path / "row.ply")
    text = text.replace("property float opacity\n", "")
    (tmp_path / "lack.ply").write_text(text + " ".join(["0"] * 13) + "\n")
    with pytest.raises(Snap3dError, match="lack.ply: PLY vertex element lacks opacity"):
        load_ply(tmp_path / "lack.ply")

    save_ply(tmp_path / "nan.ply", random_splats(3, 0))
    data = bytearray((tmp_path / "nan.ply").read_bytes())
    body = data.index(b"end_header\n") + len(b"end_header\n")
    data[body + 4 : body + 8] = struct.pack("<f", float("nan"))
    (tmp_path / "nan.ply").write_bytes(bytes(data))
    with pytest.raises(Snap3dError, match="nan.ply: means has NaN"):
        load_ply(tmp_path / "nan.ply")


def test_writers_refuse_nan_and_keep_old_file(tmp_path):
    splats = random_splats(4, 0)
    splats.scales[3, 1] = float("inf")
    for ext in ("ply", "splat", "spz"):
        target = tmp_path / f"s.{ext}"
        target.write_bytes(b"old")
        with pytest.raises(Snap3dError, match=f"s.{ext}: scales has NaN or infinite"):
            save_splats(target, splats)
        assert target.read_bytes() == b"old"
    assert len(os.listdir(tmp_path)) == 3
