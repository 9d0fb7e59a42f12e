"""The torch backend against gsplat's CUDA kernels, on CUDA tensors."""

from __future__ import annotations

import math

import pytest
import torch

from snap3d.render import rasterize_gaussians

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

WIDTH, HEIGHT = 96, 64


def cuda_scene(n=3000, n_cameras=2, seed=0, sh_degree=None):
    """Gaussians of a few pixels in front of two cameras, many of them off-screen."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(n, generator=g) * 6 + 2
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * depth[:, None]
    means = torch.cat([xy, depth[:, None]], dim=1)
    scales = (torch.rand(n, 1, generator=g) * 2 + 0.5) * depth[:, None] / WIDTH
    scales = scales * (torch.rand(n, 3, generator=g) + 0.5)
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.rand(n, generator=g) * 0.9 + 0.1
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    viewmats = torch.eye(4).repeat(n_cameras, 1, 1)
    c, s = math.cos(0.2), math.sin(0.2)
    viewmats[1, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    viewmats[1, 0, 3] = 0.3
    Ks = torch.tensor([[WIDTH, 0.0, WIDTH / 2], [0.0, WIDTH, HEIGHT / 2], [0.0, 0.0, 1.0]])
    Ks = Ks.repeat(n_cameras, 1, 1)
    return [t.cuda() for t in (means, quats, scales, opacities, colors, viewmats, Ks)]


def render(scene, backend, **options):
    leaves = [t.clone().requires_grad_(True) for t in scene[:5]]
    image, alpha, meta = rasterize_gaussians(
        *leaves, *scene[5:], WIDTH, HEIGHT, backend=backend, **options
    )
    g = torch.Generator(device="cuda").manual_seed(1)
    weights = torch.rand(image.shape, generator=g, device="cuda")
    ((image * weights).sum() + alpha.sum()).backward()
    return image.detach(), alpha.detach(), meta, [t.grad for t in leaves]


def assert_relative(got, want, rtol, name):
    err = (got - want).abs().max() / want.abs().max().clamp_min(1e-12)
    assert err < rtol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(rasterize_mode="antialiased"),
        dict(render_mode="RGB+ED", backgrounds="grey"),
        dict(sh_degree=3),
    ],
    ids=["classic", "antialiased", "rgb+ed+background", "sh3"],
)
def test_torch_backend_matches_gsplat(options):
    options = dict(options)
    scene = cuda_scene(sh_degree=options.get("sh_degree"))
    if options.get("backgrounds") == "grey":
        options["backgrounds"] = torch.full((2, 3), 0.5, device="cuda")
    image, alpha, meta, grads = render(scene, "torch", **options)
    ref_image, ref_alpha, ref_meta, ref_grads = render(scene, "gsplat", **options)

    # Radii are ceil()ed from float32 values computed in different orders: allow a pixel,
    # and a rare Gaussian culled by one and not the other at the image border.
    ours, theirs = (meta["radii"] > 0).all(-1), (ref_meta["radii"] > 0).all(-1)
    visible = ours & theirs
    assert visible.sum() >= 0.999 * (ours | theirs).sum()
    assert (meta["radii"] - ref_meta["radii"])[visible].abs().max() <= 1
    torch.testing.assert_close(meta["means2d"][visible], ref_meta["means2d"][visible])
    torch.testing.assert_close(meta["conics"][visible], ref_meta["conics"][visible])
    torch.testing.assert_close(image, ref_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-4, rtol=0)
    for name, grad, ref in zip(
        ["means", "quats", "scales", "opacities", "colors"], grads, ref_grads, strict=True
    ):
        assert_relative(grad, ref, 1e-3, name)
    assert_relative(meta["means2d"].grad, ref_meta["means2d"].grad, 1e-3, "means2d")


def test_absgrad_matches_gsplat():
    scene = cuda_scene(seed=3)
    *_, meta, _ = render(scene, "torch", absgrad=True)
    *_, ref_meta, _ = render(scene, "gsplat", absgrad=True)
    assert_relative(meta["means2d"].absgrad, ref_meta["means2d"].absgrad, 1e-3, "absgrad")


def test_auto_picks_gsplat_on_cuda(monkeypatch):
    import gsplat

    calls = []
    original = gsplat.rasterization

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(gsplat, "rasterization", spy)
    rasterize_gaussians(*cuda_scene(n=100), WIDTH, HEIGHT)
    assert len(calls) == 1 and calls[0]["packed"] is False
