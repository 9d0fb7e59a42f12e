"""Multi-resolution hash encoding (Instant-NGP) in pure torch, laid out as tiny-cuda-nn's.

A point ``x`` in [0,1]^3 is encoded at L levels. Level ``l`` is a grid of scale
``s_l = b^l * N_min - 1`` (``b`` the per-level scale, ``N_min`` the base resolution) and
resolution ``R_l = ceil(s_l) + 1`` vertices per axis; the point falls in the cell of
``floor(x * s_l + 0.5)`` (the half-cell offset staggers the levels) and its feature is the
trilinear interpolation of the F-vectors stored at the cell's 8 corners. A corner
``(i, j, k)`` indexes its level's table densely, ``i + j R + k R^2``, when the level fits
in the table (``R^3 <= size``), else by the spatial hash
``(i * 1) xor (j * 2654435761) xor (k * 805459861)`` in 32-bit arithmetic; either index
is taken modulo the level's table size. The output concatenates the levels:
``[N, L * F]``, level-major.

The parameters are one flat vector holding every level's table in turn, each table
``[size_l, F]`` row-major, where ``size_l`` is ``R_l^3`` rounded up to a multiple of 8 and
capped at ``2^T``. This is exactly tiny-cuda-nn's ``HashGrid`` encoding (``tcnn.Encoding``
with ``otype: HashGrid``, ``interpolation: Linear``) parameter vector, so a checkpoint
moves between the two implementations unchanged. On CUDA with ``tinycudann`` installed,
``backend="auto"`` runs tiny-cuda-nn's kernels on these very parameters; everywhere else
(and with ``backend="torch"``) the torch implementation below runs.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from snap3d.errors import Snap3dError

#: tiny-cuda-nn's hash primes for the x, y, z axes (x's is 1, for memory coherence).
PRIMES = (1, 2654435761, 805459861)
_CORNERS = torch.tensor([[(c >> d) & 1 for d in range(3)] for c in range(8)])  # [8,3], x fastest

HashBackend = Literal["auto", "torch", "tcnn"]


@functools.cache
def tcnn_importable() -> bool:
    """Whether ``tinycudann`` imports (it raises more than ImportError without CUDA)."""
    try:
        import tinycudann  # noqa: F401
    except Exception:
        return False
    return True


def per_level_scale_for(base_resolution: int, max_resolution: int, num_levels: int) -> float:
    """Growth factor b so that the finest of ``num_levels`` levels has ``max_resolution``."""
    if num_levels <= 1:
        return 1.0
    return math.exp((math.log(max_resolution) - math.log(base_resolution)) / (num_levels - 1))


class HashGrid(nn.Module):
    """Multi-resolution hash encoding of points in [0,1]^3 (see the module docstring).

    Args:
        num_levels: L, at most 32.
        features_per_level: F, one of 1, 2, 4, 8.
        log2_hashmap_size: T, the largest table has 2^T entries.
        base_resolution: N_min, vertices per axis of the coarsest level.
        per_level_scale: b, the resolution growth factor between levels.
        backend: ``"auto"`` (tiny-cuda-nn on CUDA when it imports, else torch), ``"torch"``
            or ``"tcnn"``.

    Attributes:
        params: [n_params] all tables, tiny-cuda-nn's layout; initialised uniform in
            [-1e-4, 1e-4] as tiny-cuda-nn does.
        scales: per level, ``s_l`` as float32 (as tiny-cuda-nn computes it).
        resolutions: per level, ``R_l``.
        offsets: L + 1 table offsets in entries (multiply by F for ``params`` offsets).
    """

    def __init__(
        self,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 2.0,
        backend: HashBackend = "auto",
    ):
        super().__init__()
        if not 1 <= num_levels <= 32:
            raise Snap3dError(f"hash grid levels must be in 1..32, got {num_levels}")
        if features_per_level not in (1, 2, 4, 8):
            raise Snap3dError(f"features per level must be 1, 2, 4 or 8, got {features_per_level}")
        if not 3 <= log2_hashmap_size <= 30:
            raise Snap3dError(f"log2 hash table size must be in 3..30, got {log2_hashmap_size}")
        if backend not in ("auto", "torch", "tcnn"):
            raise Snap3dError(f"hash grid backend must be auto, torch or tcnn, got {backend!r}")
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = per_level_scale
        self.backend = backend
        # float32 arithmetic as in tiny-cuda-nn: exp2f(l * log2f(b)) * N_min - 1.
        log2_scale = np.log2(np.float32(per_level_scale))
        self.scales = [
            float(np.exp2(np.float32(level) * log2_scale) * np.float32(base_resolution) - 1)
            for level in range(num_levels)
        ]
        self.resolutions = [math.ceil(s) + 1 for s in self.scales]
        sizes = [min(-(-(r**3) // 8) * 8, 1 << log2_hashmap_size) for r in self.resolutions]
        self.offsets = [0, *np.cumsum(sizes).tolist()]
        n_params = self.offsets[-1] * features_per_level
        self.params = nn.Parameter(torch.empty(n_params).uniform_(-1e-4, 1e-4))
        self._tcnn = None

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def table_size(self, level: int) -> int:
        return self.offsets[level + 1] - self.offsets[level]

    def tcnn_config(self) -> dict:
        """The ``encoding_config`` of the equivalent ``tinycudann.Encoding``."""
        return {
            "otype": "HashGrid",
            "n_levels": self.num_levels,
            "n_features_per_level": self.features_per_level,
            "log2_hashmap_size": self.log2_hashmap_size,
            "base_resolution": self.base_resolution,
            "per_level_scale": self.per_level_scale,
            "interpolation": "Linear",
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.tcnn_config().items() if k != "otype")

    # -- the torch implementation ---------------------------------------------------------

    def corners(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Table entries and trilinear weights of each point's 8 cell corners per level.

        Args:
            x: [N,3] points in [0,1]^3 (float32).

        Returns:
            (entries [L,N,8] int64 indices into the flat table of entries, so that
            ``params.view(-1, F)[entries]`` are the corner features; weights [L,N,8]).
            Corner c has offset ``((c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1)``.
        """
        device = x.device
        levels = torch.tensor(self.scales, device=device)[:, None, None]  # [L,1,1]
        pos = x.float()[None] * levels + 0.5  # [L,N,3]
        cell = torch.floor(pos)
        frac = pos - cell
        # w[c] = prod over axes of frac or 1 - frac; corner c = x + 2y + 4z
        wx, wy, wz = torch.stack([1 - frac, frac], -1).unbind(-2)  # [L,N,2] each
        weights = (
            wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]
        ).flatten(-3)
        grid = cell.long()[..., None, :] + _CORNERS.to(device)  # [L,N,8,3]
        res = torch.tensor(self.resolutions, device=device)[:, None, None]
        sizes = torch.tensor(
            [self.table_size(level) for level in range(self.num_levels)], device=device
        )[:, None, None]
        dense = grid[..., 0] + grid[..., 1] * res + grid[..., 2] * (res * res)
        hashed = (grid[..., 0] * PRIMES[0]) & 0xFFFFFFFF
        hashed = hashed ^ ((grid[..., 1] * PRIMES[1]) & 0xFFFFFFFF)
        hashed = hashed ^ ((grid[..., 2] * PRIMES[2]) & 0xFFFFFFFF)
        offsets = torch.tensor(self.offsets[:-1], device=device)[:, None, None]
        entries = torch.where(res**3 <= sizes, dense, hashed) % sizes + offsets
        return entries, weights

    def encode_torch(self, x: Tensor) -> Tensor:
        """[N,3] points in [0,1]^3 -> [N, L*F] features, with the torch implementation."""
        entries, weights = self.corners(x)
        feats = self.params.view(-1, self.features_per_level)[entries]  # [L,N,8,F]
        out = (weights[..., None, :] @ feats)[..., 0, :]  # [L,N,F]
        return out.permute(1, 0, 2).reshape(x.shape[0], self.output_dim)

    # -- dispatch -----------------------------------------------------------------------

    def _use_tcnn(self, x: Tensor) -> bool:
        if self.backend == "tcnn":
            if not (x.is_cuda and tcnn_importable()):
                raise Snap3dError("hash grid backend 'tcnn' needs CUDA tensors and tinycudann")
            return True
        return self.backend == "auto" and x.is_cuda and tcnn_importable()

    def _encode_tcnn(self, x: Tensor) -> Tensor:
        import tinycudann

        if self._tcnn is None:
            encoding = tinycudann.Encoding(3, self.tcnn_config(), dtype=torch.float32)
            # Kept out of the module tree (state_dict, .to): it runs on our parameters.
            object.__setattr__(self, "_tcnn", encoding)
        self._tcnn.params = self.params
        return self._tcnn(x.float().contiguous()).float()

    def forward(self, x: Tensor) -> Tensor:
        """Encode points.

        Args:
            x: [N,3] points in [0,1]^3.

        Returns:
            [N, L*F] features, level-major.
        """
        if x.shape[0] == 0:
            return x.new_zeros(0, self.output_dim)
        if self._use_tcnn(x):
            return self._encode_tcnn(x)
        return self.encode_torch(x)
