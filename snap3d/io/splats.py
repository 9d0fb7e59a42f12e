"""`SplatData`: the one container for a set of 3D Gaussians, and helpers its codecs share.

The parameterisation is gsplat's (and its ``simple_trainer`` checkpoints'):

=============  ==========  ==================================================
name           shape       meaning
=============  ==========  ==================================================
``means``      [N, 3]      centres, in the scene's frame
``quats``      [N, 4]      rotations as quaternions (w, x, y, z), any norm
``scales``     [N, 3]      log of the standard deviations along the local axes
``opacities``  [N]         opacity logits (opacity = sigmoid(logit))
``sh0``        [N, 1, 3]   SH DC coefficient per RGB channel (colour = 0.5 + SH_C0 * sh0)
``shN``        [N, K, 3]   higher SH coefficients, K = (degree + 1)^2 - 1 in {0, 3, 8, 15}
=============  ==========  ==================================================

All are float32 tensors on one device. The frame is whatever the trainer used;
snap3d trains in OpenCV axes (x right, y down, z forward), which is also what
Inria-style PLY files hold, so PLY is read and written without conversion.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

import numpy as np
import torch

from snap3d.errors import Snap3dError

__all__ = ["SH_C0", "SplatData"]

#: The degree-0 real spherical harmonic, 1 / (2 sqrt(pi)): colour = 0.5 + SH_C0 * sh0.
SH_C0 = 0.28209479177387814

_SH_DEGREE_OF_K = {0: 0, 3: 1, 8: 2, 15: 3}


@dataclass
class SplatData:
    """A set of N 3D Gaussians in gsplat's parameterisation (see the module docstring).

    Attributes:
        means: [N, 3] centres.
        quats: [N, 4] quaternions (w, x, y, z), not necessarily normalised.
        scales: [N, 3] log scales.
        opacities: [N] opacity logits.
        sh0: [N, 1, 3] SH DC coefficients.
        shN: [N, K, 3] higher-order SH coefficients, K in {0, 3, 8, 15}.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh0: torch.Tensor
    shN: torch.Tensor

    @property
    def num(self) -> int:
        """Number of Gaussians N."""
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        """Spherical-harmonics degree (0..3), from K = shN.shape[1]."""
        return sh_degree_of_coefficients(self.shN.shape[1])

    def to(self, device: torch.device | str) -> SplatData:
        """Return a copy with every tensor on ``device``."""
        return SplatData(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Return the tensors under gsplat simple_trainer's key names."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, tensors: dict[str, torch.Tensor]) -> SplatData:
        """Build from a dict with gsplat simple_trainer's keys (e.g. ``ckpt["splats"]``).

        Extra keys are ignored; values are detached and cast to float32.
        """
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise Snap3dError(f"splat dict lacks {', '.join(missing)} (has {', '.join(tensors)})")
        return cls(**{n: torch.as_tensor(tensors[n]).detach().float() for n in names})

    def validate(self, path: str | os.PathLike | None = None) -> None:
        """Check dtypes, shapes and that every value is finite.

        Args:
            path: the file these Gaussians come from or go to, named in the error.

        Raises:
            Snap3dError: on the first problem found.
        """
        n = self.means.shape[0] if isinstance(self.means, torch.Tensor) and self.means.ndim else 0
        expected = {
            "means": (3,),
            "quats": (4,),
            "scales": (3,),
            "opacities": (),
            "sh0": (1, 3),
        }
        for name, tail in expected.items():
            tensor = getattr(self, name)
            if not isinstance(tensor, torch.Tensor):
                raise Snap3dError(f"{name} is a {type(tensor).__name__}, not a tensor", path)
            if tuple(tensor.shape) != (n, *tail):
                want = ", ".join(["N", *map(str, tail)])
                raise Snap3dError(
                    f"{name} has shape {tuple(tensor.shape)}; expected ({want}) with N = {n}",
                    path,
                )
        if (
            not isinstance(self.shN, torch.Tensor)
            or self.shN.ndim != 3
            or self.shN.shape[0] != n
            or self.shN.shape[2] != 3
            or self.shN.shape[1] not in _SH_DEGREE_OF_K
        ):
            shape = tuple(self.shN.shape) if isinstance(self.shN, torch.Tensor) else None
            raise Snap3dError(
                f"shN has shape {shape}; expected (N, K, 3) with N = {n}, K in 0, 3, 8, 15", path
            )
        for f in fields(self):
            tensor = getattr(self, f.name)
            if tensor.dtype != torch.float32:
                raise Snap3dError(f"{f.name} is {tensor.dtype}; expected torch.float32", path)
            bad = ~torch.isfinite(tensor)
            if bad.any():
                rows = bad.reshape(n, -1).any(dim=1).nonzero()[:, 0]
                raise Snap3dError(
                    f"{f.name} has NaN or infinite values in {len(rows)} of {n} Gaussians"
                    f" (first: Gaussian {int(rows[0])})",
                    path,
                )

    def select(self, mask_or_index: torch.Tensor) -> SplatData:
        """Return the Gaussians picked by a [N] bool mask or a [M] index tensor."""
        return SplatData(**{f.name: getattr(self, f.name)[mask_or_index] for f in fields(self)})

    def morton_order(self, bits: int = 10) -> torch.Tensor:
        """Permutation sorting the Gaussians along a 3D Morton (Z-order) curve.

        Means are quantised to ``bits`` bits per axis over their bounding cube (the
        box's largest side, so that cells are cubes): q = floor((m - min) / side * 2^bits),
        clamped to 2^bits - 1. The code interleaves the bits of q as ... z1 y1 x1 z0 y0 x0
        (x in the least significant bit). Ties keep their original order.

        Args:
            bits: bits per axis, 1..21 (the code must fit in 63 bits).

        Returns:
            [N] int64 permutation; ``splats.select(order)`` is the sorted set.
        """
        if not 1 <= bits <= 21:
            raise ValueError(f"bits must be in 1..21, not {bits}")
        # float64 on the CPU: exact enough for 21 bits, and available on every backend (not MPS).
        means = self.means.detach().cpu().double()
        if self.num == 0:
            return torch.zeros(0, dtype=torch.long, device=self.means.device)
        low = means.min(dim=0).values
        side = (means.max(dim=0).values - low).max()
        side = torch.where(side > 0, side, torch.ones_like(side))
        cells = 1 << bits
        q = torch.floor((means - low) / side * cells).long().clamp_(0, cells - 1)
        code = torch.zeros(self.num, dtype=torch.long)
        for bit in range(bits):
            for axis in range(3):
                code |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
        return torch.argsort(code, stable=True).to(self.means.device)


# Helpers shared by the codecs (ply, splat, spz): numpy in, numpy out.


def read_bytes(path: str | os.PathLike) -> bytes:
    """Return the whole file, raising Snap3dError naming it if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise Snap3dError("file not found", path) from None
    except IsADirectoryError:
        raise Snap3dError("is a folder, not a file", path) from None
    except OSError as e:
        raise Snap3dError(f"cannot read: {e.strerror}", path) from None


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (C's ``round``; numpy's rounds ties to even)."""
    return np.copysign(np.floor(np.abs(x) + 0.5), x)


def unit_to_byte(x: np.ndarray) -> np.ndarray:
    """Quantise values in [0, 1] to uint8 steps of 1/255 (rounded, clamped)."""
    return np.clip(round_half_away(x * np.float32(255)), 0, 255).astype(np.uint8)


# Decoding alpha bytes 0 and 255 as logit(0) = -inf and logit(1) = +inf would break
# validation and arithmetic; a quarter of a step inside keeps them finite and still
# re-encodes to the same byte.
_ALPHA_EPS = 1.0 / (4 * 255)


def opacity_to_byte(logits: np.ndarray) -> np.ndarray:
    """Opacity logits [...] -> uint8 alpha, round(sigmoid(logit) * 255)."""
    return unit_to_byte(1.0 / (1.0 + np.exp(-logits.astype(np.float64))))


def byte_to_opacity(alpha: np.ndarray) -> np.ndarray:
    """uint8 alpha [...] -> float32 opacity logits, finite even for bytes 0 and 255."""
    a = np.clip(alpha.astype(np.float64) / 255.0, _ALPHA_EPS, 1.0 - _ALPHA_EPS)
    return np.log(a / (1.0 - a)).astype(np.float32)


def unit_quats(quats: np.ndarray) -> np.ndarray:
    """[N, 4] quaternions -> unit quaternions; zero ones become the identity (1, 0, 0, 0)."""
    q = quats.astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    identity = np.zeros_like(q)
    identity[:, 0] = 1.0
    return np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), identity)


def splat_data_from_numpy(
    means: np.ndarray,
    quats: np.ndarray,
    scales: np.ndarray,
    opacities: np.ndarray,
    sh0: np.ndarray,
    shN: np.ndarray,
) -> SplatData:
    """Wrap decoded numpy arrays (shapes as in SplatData) as float32 CPU tensors."""

    def tensor(a: np.ndarray) -> torch.Tensor:
        # Decoded arrays may be read-only views of the file's bytes; tensors must own memory.
        return torch.from_numpy(np.require(a, np.float32, ["C_CONTIGUOUS", "WRITEABLE"]))

    return SplatData(
        means=tensor(means),
        quats=tensor(quats),
        scales=tensor(scales),
        opacities=tensor(opacities),
        sh0=tensor(sh0),
        shN=tensor(shN),
    )


def splat_data_to_numpy(splats: SplatData) -> dict[str, np.ndarray]:
    """The tensors as float32 numpy arrays on the CPU, under SplatData's field names."""
    return {
        name: t.detach().cpu().numpy().astype(np.float32, copy=False)
        for name, t in splats.to_dict().items()
    }


def sh_degree_of_coefficients(k: int, path: str | os.PathLike | None = None) -> int:
    """Degree for K higher-order coefficients per channel, or Snap3dError naming ``path``."""
    if k not in _SH_DEGREE_OF_K:
        degree = math.isqrt(k + 1) - 1
        hint = f" (degree {degree} is not supported)" if (degree + 1) ** 2 - 1 == k else ""
        raise Snap3dError(
            f"{k} higher-order SH coefficients per channel; expected 0, 3, 8 or 15{hint}", path
        )
    return _SH_DEGREE_OF_K[k]
