"""rasterize_gaussians against an independent dense reference, gsplat's torch references,
analytic values and gsplat's densification strategy; both the compiled CPU path and the
plain-PyTorch one are checked."""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch

from snap3d.errors import Snap3dError
from snap3d.render import _cpu, rasterize_gaussians
from snap3d.render._projection import project_gaussians
from snap3d.render._sh import eval_sh
from snap3d.render._tiles import bin_gaussians

WIDTH, HEIGHT = 32, 24


@pytest.fixture(params=["compiled", "pure"])
def compositor(request, monkeypatch):
    """Run the test with the compiled CPU path (C++ projection and compositing) and with
    the plain-PyTorch one."""
    if request.param == "pure":
        monkeypatch.setenv("SNAP3D_NO_EXT", "1")
    else:
        monkeypatch.delenv("SNAP3D_NO_EXT", raising=False)
        if _cpu.load_extension() is None:
            pytest.skip("the C++ rasterizer could not be built here")
    return request.param


def random_scene(n=150, n_cameras=2, *, seed=0, dtype=torch.float64, size=0.15, dense=False):
    """Gaussians around the origin seen by cameras 3 units away, some of them behind the
    second camera's near plane or off-screen. ``dense`` makes large, opaque Gaussians so
    that pixels reach the 1e-4 transmittance cut-off."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([1.2, 1.0, 1.5], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * size + 0.02
    opacities = torch.rand(n, generator=g, dtype=dtype)
    if dense:
        scales, opacities = scales * 3, 0.5 + 0.5 * opacities
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    viewmats = torch.eye(4, dtype=dtype).repeat(n_cameras, 1, 1)
    viewmats[:, 2, 3] = 3.0
    if n_cameras > 1:
        c, s = math.cos(0.3), math.sin(0.3)
        viewmats[1, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=dtype)
        viewmats[1, :3, 3] = torch.tensor([0.4, -0.2, 1.5], dtype=dtype)
    Ks = torch.tensor([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]], dtype=dtype).repeat(
        n_cameras, 1, 1
    )
    return means, quats, scales, opacities, colors, viewmats, Ks


def dense_reference(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmats,
    Ks,
    width,
    height,
    backgrounds=None,
    antialiased=False,
    eps2d=0.3,
    near_plane=0.01,
):
    """Every Gaussian evaluated at every pixel centre, composited in depth order, one
    Gaussian at a time. Colours are [N, D] or [C, N, D]."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rotations = torch.stack(
        [
            torch.stack(
                [w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y)], -1
            ),
            torch.stack(
                [2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x)], -1
            ),
            torch.stack(
                [2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z], -1
            ),
        ],
        -2,
    )
    covars = rotations @ torch.diag_embed(scales**2) @ rotations.transpose(-1, -2)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype) + 0.5,
        torch.arange(width, dtype=means.dtype) + 0.5,
        indexing="ij",
    )
    pixels = torch.stack([xs, ys], -1).reshape(-1, 2)
    images, alphas = [], []
    for cam in range(viewmats.shape[0]):
        R, t = viewmats[cam, :3, :3], viewmats[cam, :3, 3]
        p = means @ R.T + t
        depth = p[:, 2]
        in_range = depth >= near_plane
        z = torch.where(in_range, depth, torch.ones_like(depth))
        fx, fy, cx, cy = Ks[cam, 0, 0], Ks[cam, 1, 1], Ks[cam, 0, 2], Ks[cam, 1, 2]
        u, v = p[:, 0] / z, p[:, 1] / z
        # gsplat evaluates the Jacobian at the centre clamped to 1.3x the field of view.
        u_j = torch.clamp(u, -(cx + 0.15 * width) / fx, (width - cx + 0.15 * width) / fx)
        v_j = torch.clamp(v, -(cy + 0.15 * height) / fy, (height - cy + 0.15 * height) / fy)
        zero = torch.zeros_like(z)
        J = torch.stack(
            [
                torch.stack([fx / z, zero, -fx * u_j / z], -1),
                torch.stack([zero, fy / z, -fy * v_j / z], -1),
            ],
            -2,
        )
        cov2d = J @ R @ covars @ R.T @ J.transpose(-1, -2)
        blurred = cov2d + eps2d * torch.eye(2, dtype=means.dtype)
        conics = torch.linalg.inv(blurred)
        centres = torch.stack([fx * u + cx, fy * v + cy], -1)
        opacity = opacities
        if antialiased:
            opacity = opacity * torch.sqrt(torch.linalg.det(cov2d) / torch.linalg.det(blurred))
        d = centres[None] - pixels[:, None]  # [P, N, 2]
        sigma = 0.5 * torch.einsum("pni,nij,pnj->pn", d, conics, d)
        alpha = torch.clamp(opacity * torch.exp(-sigma), max=0.999)
        alpha = torch.where(in_range & (sigma >= 0) & (alpha >= 1 / 255), alpha, 0)
        cam_colors = colors if colors.dim() == 2 else colors[cam]
        T = torch.ones(pixels.shape[0], dtype=means.dtype)
        image = torch.zeros(pixels.shape[0], cam_colors.shape[-1], dtype=means.dtype)
        done = torch.zeros(pixels.shape[0], dtype=torch.bool)
        for g in torch.argsort(depth, stable=True).tolist():
            a = alpha[:, g]
            done = done | ((a > 0) & (T * (1 - a) <= 1e-4))
            a = torch.where(done, 0, a)
            image = image + (a * T)[:, None] * cam_colors[g]
            T = T * (1 - a)
        if backgrounds is not None:
            image = image + T[:, None] * backgrounds[cam]
        images.append(image.reshape(height, width, -1))
        alphas.append((1 - T).reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas)


def render_with_grads(render, scene, weights_seed=1):
    """Render, then backpropagate a fixed random weighting of colours and alphas."""
    leaves = [t.detach().clone().requires_grad_(True) for t in scene[:5]]
    image, alpha = render(*leaves, *scene[5:])
    g = torch.Generator().manual_seed(weights_seed)
    w_image = torch.rand(image.shape, generator=g, dtype=torch.float64).to(image.dtype)
    w_alpha = torch.rand(alpha.shape, generator=g, dtype=torch.float64).to(alpha.dtype)
    ((image * w_image).sum() + (alpha * w_alpha).sum()).backward()
    return image.detach(), alpha.detach(), [t.grad for t in leaves]


def assert_grads_close(grads, expected, rtol):
    names = ["means", "quats", "scales", "opacities", "colors"]
    for name, grad, ref in zip(names, grads, expected, strict=True):
        scale = ref.abs().max()
        assert scale > 0, name
        err = (grad - ref).abs().max() / scale
        assert err < rtol, f"{name}: relative error {err:.2e}"


CASES = {
    "classic": dict(),
    "antialiased": dict(antialiased=True),
    "opaque+background": dict(dense=True, background=True),
    "opaque+antialiased+background": dict(dense=True, antialiased=True, background=True),
}


def case_inputs(name):
    case = CASES[name]
    scene = random_scene(200 if case.get("dense") else 150, dense=case.get("dense", False))
    g = torch.Generator().manual_seed(2)
    backgrounds = (
        torch.rand(2, 3, generator=g, dtype=torch.float64) if case.get("background") else None
    )
    return scene, backgrounds, case.get("antialiased", False)


@functools.cache
def reference_render(name):
    """The dense reference's images and gradients for a case, shared by all tests."""
    scene, backgrounds, antialiased = case_inputs(name)

    def reference(*args):
        return dense_reference(
            *args, WIDTH, HEIGHT, backgrounds=backgrounds, antialiased=antialiased
        )

    return render_with_grads(reference, scene)


def render_case(name, dtype):
    scene, backgrounds, antialiased = case_inputs(name)
    mode = "antialiased" if antialiased else "classic"

    def ours(*args):
        return rasterize_gaussians(
            *args,
            WIDTH,
            HEIGHT,
            backgrounds=None if backgrounds is None else backgrounds.to(dtype),
            rasterize_mode=mode,
        )[:2]

    return render_with_grads(ours, [t.to(dtype) for t in scene])


@pytest.mark.parametrize("name", CASES)
def test_matches_dense_reference_float64(compositor, name):
    scene = case_inputs(name)[0]
    means, viewmats = scene[0], scene[5]
    depths = (means @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3])[..., 2]
    assert (depths < 0).any()  # some Gaussians are behind a camera
    image, alpha, grads = render_case(name, torch.float64)
    ref_image, ref_alpha, ref_grads = reference_render(name)
    assert ref_alpha.max() > (0.99 if CASES[name].get("dense") else 0.5)
    torch.testing.assert_close(image, ref_image, atol=1e-10, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-10, rtol=0)
    assert_grads_close(grads, ref_grads, rtol=1e-9)


@pytest.mark.parametrize("name", ["classic", "opaque+antialiased+background"])
def test_matches_dense_reference_float32(compositor, name):
    image, alpha, grads = render_case(name, torch.float32)
    ref_image, ref_alpha, ref_grads = reference_render(name)
    torch.testing.assert_close(image.double(), ref_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha.double(), ref_alpha, atol=1e-5, rtol=0)
    assert_grads_close([g.double() for g in grads], ref_grads, rtol=1e-4)


@pytest.mark.parametrize("render_mode", ["RGB+D", "RGB+ED", "D", "ED"])
def test_depth_modes_match_reference(compositor, render_mode):
    scene = random_scene(120, seed=5)
    means, viewmats = scene[0], scene[5]
    backgrounds = torch.full((2, 3), 0.25, dtype=torch.float64)
    image, alpha, _ = rasterize_gaussians(
        *scene, WIDTH, HEIGHT, render_mode=render_mode, backgrounds=backgrounds
    )
    depths = (means @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3])[..., 2:]
    features = torch.cat([scene[4].expand(2, -1, -1), depths], -1)  # [C, N, 4]
    ref_backgrounds = torch.cat([backgrounds, torch.zeros(2, 1, dtype=torch.float64)], -1)
    ref_image, ref_alpha = dense_reference(
        *scene[:4], features, *scene[5:], WIDTH, HEIGHT, backgrounds=ref_backgrounds
    )
    if render_mode.endswith("ED"):
        ref_image[..., 3:] = ref_image[..., 3:] / ref_alpha.clamp_min(1e-10)
    if render_mode in ("D", "ED"):
        ref_image = ref_image[..., 3:]
    assert image.shape == (2, HEIGHT, WIDTH, 4 if "RGB" in render_mode else 1)
    torch.testing.assert_close(image, ref_image, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-10, rtol=0)


def test_per_camera_features_and_background_grad(compositor):
    """[C, N, D] colours with D != 3, and gradients reaching the backgrounds."""
    scene = list(random_scene(100, seed=7))
    scene[4] = torch.rand(2, 100, 5, dtype=torch.float64)
    backgrounds = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    image, alpha, _ = rasterize_gaussians(*scene, WIDTH, HEIGHT, backgrounds=backgrounds)
    ref_image, ref_alpha = dense_reference(*scene, WIDTH, HEIGHT, backgrounds=backgrounds.detach())
    torch.testing.assert_close(image, ref_image, atol=1e-10, rtol=0)
    image.sum().backward()
    torch.testing.assert_close(backgrounds.grad, (1 - ref_alpha).sum(dim=(1, 2)).expand(2, 5))


def test_projection_matches_gsplat_torch_reference():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    means, quats, scales, _, _, viewmats, Ks = random_scene(300, seed=11)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    expected = _fully_fused_projection(
        means, covars, viewmats, Ks, WIDTH, HEIGHT, calc_compensations=True
    )
    ours = project_gaussians(means, quats, scales, viewmats, Ks, WIDTH, HEIGHT, antialiased=True)
    radii, means2d, depths, conics, compensations = expected
    visible = (radii > 0).all(-1)
    assert 0 < visible.sum() < visible.numel()
    assert ours.radii.dtype == torch.int32 and ours.radii.shape == radii.shape
    torch.testing.assert_close(ours.radii, radii)
    torch.testing.assert_close(ours.depths, depths)
    for got, want in [(ours.means2d, means2d), (ours.conics, conics)]:
        torch.testing.assert_close(got[visible], want[visible])
    torch.testing.assert_close(ours.compensations[visible], compensations[visible])


@pytest.mark.parametrize("antialiased", [False, True])
def test_compiled_projection_gradients_match_autograd(antialiased):
    """The hand-written projection backward against autograd through the torch projection,
    including Gaussians beyond the 1.3x field-of-view clamp and camera gradients."""
    if _cpu.load_extension() is None:
        pytest.skip("the C++ rasterizer could not be built here")
    means, quats, scales, opacities, _, viewmats, Ks = random_scene(300, seed=11)
    means, scales = means.clone(), scales.clone()
    means[:20, 0], means[:20, 2], scales[:20] = torch.linspace(-6, 6, 20), 0.5, 1.5
    results = []
    for project in (project_gaussians, _cpu.project_gaussians_cpu):
        leaves = [t.clone().requires_grad_(True) for t in (means, quats, scales, viewmats)]
        proj = project(
            *leaves[:3], leaves[3], Ks, WIDTH, HEIGHT, opacities=opacities, antialiased=antialiased
        )
        valid = (proj.radii > 0).all(-1)
        g = torch.Generator().manual_seed(1)
        outputs = [proj.means2d, proj.depths, proj.conics]
        outputs += [proj.compensations] if antialiased else []
        loss = sum(
            (t * torch.rand(t.shape, generator=g, dtype=t.dtype))[valid].sum() for t in outputs
        )
        loss.backward()
        results.append((proj, valid, [t.grad for t in leaves]))
    (expected, valid, expected_grads), (proj, _, grads) = results
    assert torch.equal(proj.radii, expected.radii)
    for name in ["means2d", "depths", "conics"] + (["compensations"] if antialiased else []):
        torch.testing.assert_close(getattr(proj, name)[valid], getattr(expected, name)[valid])
    for grad, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, want, atol=1e-12, rtol=1e-10)


def test_tile_bins_match_gsplat_torch_reference():
    from gsplat.cuda._torch_impl import _isect_offset_encode, _isect_tiles

    means, quats, scales, opacities, _, viewmats, Ks = random_scene(
        200, seed=2, dtype=torch.float32
    )
    proj = project_gaussians(means, quats, scales, viewmats, Ks, 40, HEIGHT, opacities=opacities)
    bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, 40, HEIGHT, 16)
    tiles_per_gauss, isect_ids, flatten_ids = _isect_tiles(
        proj.means2d, proj.radii, proj.depths, 16, bins.tile_width, bins.tile_height
    )
    offsets = _isect_offset_encode(isect_ids, 2, bins.tile_width, bins.tile_height)
    assert isect_ids.numel() > 100
    assert torch.equal(bins.tiles_per_gauss, tiles_per_gauss)
    assert torch.equal(bins.isect_ids, isect_ids)
    assert torch.equal(bins.flatten_ids, flatten_ids)
    assert torch.equal(bins.isect_offsets, offsets)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_sh_matches_gsplat_torch_reference(degree):
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(64, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(64, 25, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        eval_sh(degree, dirs, coeffs), _spherical_harmonics(degree, dirs, coeffs)
    )


def test_sh_colors_follow_gsplat_convention(compositor):
    """SH along camera-centre-to-mean directions, then +0.5 and clamp at zero."""
    scene = random_scene(100, seed=4)
    means, viewmats = scene[0], scene[5]
    coeffs = torch.randn(
        100, 16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    image, alpha, _ = rasterize_gaussians(
        *scene[:4], coeffs, *scene[5:], WIDTH, HEIGHT, sh_degree=3
    )
    centres = torch.linalg.inv(viewmats)[:, :3, 3]
    dirs = means[None] - centres[:, None]
    from gsplat.cuda._torch_impl import _spherical_harmonics

    colors = (_spherical_harmonics(3, dirs, coeffs.expand(2, -1, -1, -1)) + 0.5).clamp_min(0)
    assert (colors == 0).any()
    ref_image, ref_alpha = dense_reference(*scene[:4], colors, *scene[5:], WIDTH, HEIGHT)
    torch.testing.assert_close(image, ref_image, atol=1e-10, rtol=0)


def test_single_gaussian_renders_analytic_values(compositor):
    """An isotropic Gaussian of pixel std s at the image centre renders
    opacity * exp(-d² / (2 (s² + eps2d))) at pixel centres (x + 0.5, y + 0.5)."""
    f, depth, s_px, opacity, eps2d = 40.0, 4.0, 2.0, 0.8, 0.3
    width, height = 33, 33
    means = torch.tensor([[0.0, 0.0, depth]], dtype=torch.float64)
    quats = torch.tensor([[0.3, -0.2, 0.5, 0.1]], dtype=torch.float64)  # any rotation
    scales = torch.full((1, 3), s_px * depth / f, dtype=torch.float64)
    K = torch.tensor([[[f, 0, 16.5], [0, f, 16.5], [0, 0, 1]]], dtype=torch.float64)
    color = torch.tensor([[0.2, 0.5, 1.0]], dtype=torch.float64)
    image, alpha, meta = rasterize_gaussians(
        means,
        quats,
        scales,
        torch.tensor([opacity], dtype=torch.float64),
        color,
        torch.eye(4, dtype=torch.float64)[None],
        K,
        width,
        height,
        eps2d=eps2d,
    )
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    d2 = (xs[None, :] - 16.5) ** 2 + (xs[:, None] - 16.5) ** 2
    expected = opacity * torch.exp(-d2 / (2 * (s_px**2 + eps2d)))
    expected = torch.where(expected >= 1 / 255, expected, 0)
    assert alpha[0, 16, 16, 0] == pytest.approx(opacity)
    torch.testing.assert_close(alpha[0, ..., 0], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(image[0], expected[..., None] * color[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(
        meta["means2d"][0, 0], torch.tensor([16.5, 16.5], dtype=torch.float64)
    )


def test_meta_layout_matches_gsplat(compositor):
    scene = [t.float() for t in random_scene(150)]
    leaves = [t.requires_grad_(True) for t in scene[:5]]
    image, alpha, meta = rasterize_gaussians(
        *leaves, *scene[5:], WIDTH, HEIGHT, rasterize_mode="antialiased", absgrad=True
    )
    C, N = 2, 150
    assert meta["radii"].shape == (C, N, 2) and meta["radii"].dtype == torch.int32
    assert meta["means2d"].shape == (C, N, 2)
    assert meta["depths"].shape == (C, N) and meta["conics"].shape == (C, N, 3)
    assert meta["opacities"].shape == (C, N)
    assert meta["tiles_per_gauss"].shape == (C, N)
    assert meta["isect_offsets"].shape == (C, meta["tile_height"], meta["tile_width"])
    assert meta["flatten_ids"].dtype == torch.int32 and meta["isect_ids"].dtype == torch.int64
    assert meta["gaussian_ids"] is None and meta["camera_ids"] is None
    assert (meta["width"], meta["height"], meta["n_cameras"], meta["tile_size"]) == (
        WIDTH,
        HEIGHT,
        C,
        16,
    )
    culled = (meta["radii"] == 0).all(-1)
    assert culled.any() and not culled.all()
    image.sum().backward()
    grad, absgrad = meta["means2d"].grad, meta["means2d"].absgrad
    assert grad.shape == (C, N, 2) and absgrad.shape == (C, N, 2)
    assert (grad[culled] == 0).all() and (absgrad[culled] == 0).all()
    assert (absgrad >= grad.abs() - 1e-6).all()
    assert (absgrad > grad.abs() + 1e-3).any()


def test_compiled_and_pure_torch_agree_on_absgrad(monkeypatch):
    if _cpu.load_extension() is None:
        pytest.skip("the C++ rasterizer could not be built here")
    scene = random_scene(150, dense=True)
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("SNAP3D_NO_EXT", flag)
        leaves = [t.clone().requires_grad_(True) for t in scene[:5]]
        image, _, meta = rasterize_gaussians(*leaves, *scene[5:], WIDTH, HEIGHT, absgrad=True)
        (
            image * torch.linspace(-1, 1, image.numel(), dtype=image.dtype).view_as(image)
        ).sum().backward()
        results.append((meta["means2d"].grad, meta["means2d"].absgrad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-10, rtol=1e-9)


def test_all_gaussians_behind_camera(compositor):
    means, quats, scales, opacities, colors, viewmats, Ks = random_scene(50)
    means = means.clone()
    means[:, 2] = -10.0  # 7 units behind both cameras
    means.requires_grad_(True)
    backgrounds = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float64)
    image, alpha, meta = rasterize_gaussians(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        WIDTH,
        HEIGHT,
        backgrounds=backgrounds,
    )
    assert (meta["radii"] == 0).all() and meta["flatten_ids"].numel() == 0
    assert (alpha == 0).all()
    torch.testing.assert_close(image, backgrounds[:, None, None, :].expand_as(image))
    image.sum().backward()
    assert (means.grad == 0).all()


def test_default_strategy_grows_and_prunes():
    from gsplat.strategy import DefaultStrategy

    n = 200
    means, quats, scales, opacities, colors, viewmats, Ks = random_scene(
        n, seed=9, dtype=torch.float32, size=0.3
    )
    logit = torch.logit(opacities.clamp(0.05, 0.95))
    logit[:20] = -8.0  # opacity 3e-4: below prune_opa
    params = torch.nn.ParameterDict(
        {
            "means": means,
            "quats": quats,
            "scales": torch.log(scales),
            "opacities": logit,
            "colors": colors,
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, grow_grad2d=1e-5)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    target = torch.rand(2, HEIGHT, WIDTH, 3)

    image, _, meta = rasterize_gaussians(
        params["means"],
        params["quats"],
        torch.exp(params["scales"]),
        torch.sigmoid(params["opacities"]),
        params["colors"],
        viewmats,
        Ks,
        WIDTH,
        HEIGHT,
    )
    strategy.step_pre_backward(params, optimizers, state, step=1, info=meta)
    ((image - target) ** 2).mean().backward()
    visible = (meta["radii"] > 0).all(-1).any(0)
    big_grad = (meta["means2d"].grad.norm(dim=-1) * WIDTH).amax(0) > 1e-5
    assert (visible & big_grad).sum() > 10
    strategy.step_post_backward(params, optimizers, state, step=1, info=meta)

    survivors = n - 20
    assert len(params["means"]) > survivors  # grown (duplicated or split) ...
    assert (torch.sigmoid(params["opacities"]) > strategy.prune_opa).all()  # ... and pruned
    for p in params.values():
        assert len(p) == len(params["means"])


def test_bad_inputs_raise_snap3d_error():
    scene = random_scene(10, dtype=torch.float32)
    with pytest.raises(Snap3dError, match="CUDA"):
        rasterize_gaussians(*scene, WIDTH, HEIGHT, backend="gsplat")
    with pytest.raises(Snap3dError, match="backend"):
        rasterize_gaussians(*scene, WIDTH, HEIGHT, backend="vulkan")
    with pytest.raises(Snap3dError, match="quats"):
        rasterize_gaussians(scene[0], scene[1][:5], *scene[2:], WIDTH, HEIGHT)
    with pytest.raises(Snap3dError, match="sh_degree"):
        rasterize_gaussians(*scene, WIDTH, HEIGHT, sh_degree=1)
    with pytest.raises(Snap3dError, match="render_mode"):
        rasterize_gaussians(*scene, WIDTH, HEIGHT, render_mode="RGBD")
    with pytest.raises(Snap3dError, match="backgrounds"):
        rasterize_gaussians(*scene, WIDTH, HEIGHT, backgrounds=torch.zeros(2, 4))


def test_failed_build_falls_back_with_one_warning(monkeypatch):
    import torch.utils.cpp_extension

    def broken_load(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.delenv("SNAP3D_NO_EXT", raising=False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken_load)
    monkeypatch.setitem(_cpu._state, "loaded", set())
    monkeypatch.setitem(_cpu._state, "failed", set())
    scene = random_scene(50)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch"):
        image, _, _ = rasterize_gaussians(*scene, WIDTH, HEIGHT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _, _ = rasterize_gaussians(*scene, WIDTH, HEIGHT)
    torch.testing.assert_close(image, again)
    torch.testing.assert_close(image, dense_reference(*scene, WIDTH, HEIGHT)[0], atol=1e-10, rtol=0)
