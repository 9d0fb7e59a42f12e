"""The multi-resolution hash encoding against hand computations and tiny-cuda-nn."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from snap3d.errors import Snap3dError
from snap3d.representations.hashgrid import PRIMES, HashGrid, per_level_scale_for


def small_grid(**kwargs) -> HashGrid:
    """Levels of scale 3, 7, 15, 31 (resolutions 4, 8, 16, 32); tables of at most 256."""
    options = dict(
        num_levels=4,
        features_per_level=2,
        log2_hashmap_size=8,
        base_resolution=4,
        per_level_scale=2.0,
        backend="torch",
    )
    return HashGrid(**{**options, **kwargs})


def reference_encoding(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Instant-NGP's encoding computed point by point in float64 with Python integers."""
    table = grid.params.detach().double().view(-1, grid.features_per_level)
    out = torch.zeros(x.shape[0], grid.output_dim, dtype=torch.float64)
    for n, point in enumerate(x.tolist()):
        for level in range(grid.num_levels):
            scale = grid.scales[level]
            res = grid.resolutions[level]
            size = grid.offsets[level + 1] - grid.offsets[level]
            pos = [p * scale + 0.5 for p in point]
            cell = [math.floor(p) for p in pos]
            frac = [p - c for p, c in zip(pos, cell, strict=True)]
            for corner in itertools.product((0, 1), repeat=3):
                i, j, k = (c + o for c, o in zip(cell, corner, strict=True))
                weight = math.prod(f if o else 1 - f for f, o in zip(frac, corner, strict=True))
                if res**3 <= size:
                    index = i + j * res + k * res * res
                else:
                    index = ((i * PRIMES[0]) ^ (j * PRIMES[1]) ^ (k * PRIMES[2])) % 2**32
                row = grid.offsets[level] + index % size
                f = grid.features_per_level
                out[n, level * f : (level + 1) * f] += weight * table[row]
    return out


def test_layout_is_tiny_cuda_nn_s():
    grid = small_grid()
    assert grid.scales == [3.0, 7.0, 15.0, 31.0]
    assert grid.resolutions == [4, 8, 16, 32]
    # 4^3 = 64 dense; 8^3 = 512 and beyond capped at 2^8 and hashed
    assert grid.offsets == [0, 64, 320, 576, 832]
    assert grid.params.shape == (832 * 2,)
    assert grid.output_dim == 8
    # dense sizes round up to a multiple of 8: 3^3 = 27 -> 32
    assert HashGrid(1, 1, 8, 3, 2.0).params.shape == (32,)
    assert grid.tcnn_config()["otype"] == "HashGrid"
    assert abs(grid.params).max() <= 1e-4


def test_per_level_scale_reaches_the_finest_resolution():
    b = per_level_scale_for(16, 512, 6)
    assert b**5 * 16 == pytest.approx(512)
    assert per_level_scale_for(16, 512, 1) == 1.0


def test_corner_indices_by_hand():
    grid = small_grid()
    x = torch.tensor([[0.31, 0.62, 0.93]])
    entries, weights = grid.corners(x)
    assert entries.shape == (4, 1, 8) and weights.shape == (4, 1, 8)
    # level 0 (scale 3, dense): pos = 1.43, 2.36, 3.29 -> cell (1, 2, 3): 1 + 2*4 + 3*16
    assert int(entries[0, 0, 0]) == 1 + 2 * 4 + 3 * 16
    # corner 7 = (+1, +1, +1) -> (2, 3, 4): 2 + 12 + 64 = 78 wraps modulo the table (64)
    assert int(entries[0, 0, 7]) == 78 % 64
    # level 2 (scale 15, hashed): pos = 5.15, 9.8, 14.45 -> cell (5, 9, 14)
    expected = ((5 * 1) ^ (9 * 2654435761) ^ (14 * 805459861)) % 2**32 % 256
    assert int(entries[2, 0, 0]) == 320 + expected
    # corner 2 = (0, +1, 0)
    expected = ((5 * 1) ^ (10 * 2654435761) ^ (14 * 805459861)) % 2**32 % 256
    assert int(entries[2, 0, 2]) == 320 + expected
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 1))


def test_matches_the_per_point_reference():
    torch.manual_seed(0)
    grid = small_grid(features_per_level=4, num_levels=5, per_level_scale=1.7)
    with torch.no_grad():
        grid.params.uniform_(-1, 1)
    x = torch.rand(40, 3)
    x[0] = torch.tensor([0.0, 1.0, 0.5])  # the box's faces
    torch.testing.assert_close(grid(x).double(), reference_encoding(grid, x), atol=1e-5, rtol=1e-5)


def test_vertices_return_their_entries_exactly():
    grid = small_grid()
    with torch.no_grad():
        grid.params.normal_()
    table = grid.params.view(-1, 2)
    # x * 3 + 0.5 = 2 exactly: vertex (2, 2, 2) of level 0 (dense), weight 1
    out = grid(torch.full((1, 3), 0.5))
    assert torch.equal(out[0, :2], table[2 + 2 * 4 + 2 * 16])
    entries, weights = grid.corners(torch.full((1, 3), 0.5))
    assert torch.equal(weights[0, 0], torch.tensor([1.0] + [0.0] * 7))


def test_interpolation_of_a_linear_field_is_exact():
    grid = small_grid(num_levels=1, features_per_level=1, log2_hashmap_size=10)
    res = grid.resolutions[0]
    i, j, k = torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij")
    with torch.no_grad():
        table = grid.params.view(-1)
        table[(i + j * res + k * res * res).flatten()] = (i + 2 * j - k).flatten().float()
    x = torch.rand(50, 3) * 0.8  # away from the last cell (no wrap-around)
    pos = x * grid.scales[0] + 0.5
    expected = pos[:, 0] + 2 * pos[:, 1] - pos[:, 2]
    torch.testing.assert_close(grid(x)[:, 0], expected, atol=1e-4, rtol=0)


def test_gradients_reach_the_read_entries_and_the_points():
    grid = small_grid()
    with torch.no_grad():
        grid.params.normal_()
    x = torch.rand(30, 3, requires_grad=True)
    grid(x).sum().backward()
    entries, weights = grid.corners(x.detach())
    # d(sum)/d(entry) is the sum of its interpolation weights, for each of its features
    expected = torch.zeros(grid.params.numel() // 2).index_add_(
        0, entries.flatten(), weights.flatten()
    )
    torch.testing.assert_close(grid.params.grad.view(-1, 2), expected[:, None].expand(-1, 2))
    # positions: central differences, one point at a time
    eps = 1e-3
    with torch.no_grad():
        for n, axis in ((3, 1), (7, 0), (11, 2)):
            bump = torch.zeros(1, 3)
            bump[0, axis] = eps
            point = x[n : n + 1]
            numeric = (grid(point + bump).sum() - grid(point - bump).sum()) / (2 * eps)
            torch.testing.assert_close(x.grad[n, axis], numeric, atol=2e-2, rtol=2e-2)


def test_bad_settings_are_refused():
    with pytest.raises(Snap3dError, match="features per level"):
        small_grid(features_per_level=3)
    with pytest.raises(Snap3dError, match="backend"):
        small_grid(backend="cuda")
    with pytest.raises(Snap3dError, match="needs CUDA"):
        small_grid(backend="tcnn")(torch.rand(4, 3))


@pytest.mark.gpu
def test_tiny_cuda_nn_computes_the_same_encoding_on_the_same_parameters():
    pytest.importorskip("tinycudann")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    grid = HashGrid(8, 2, 12, 8, per_level_scale_for(8, 256, 8)).cuda()
    with torch.no_grad():
        grid.params.uniform_(-1, 1)
    x = torch.rand(4096, 3, device="cuda")
    assert grid._use_tcnn(x)
    fast = grid(x)
    fast.square().sum().backward()
    grad_fast = grid.params.grad.clone()
    grid.params.grad = None
    slow = grid.encode_torch(x)
    slow.square().sum().backward()
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad_fast, grid.params.grad, atol=1e-3, rtol=1e-3)
