"""Rigid motion bases that Gaussians blend (Shape of Motion, SC-GS).

``K`` rigid motions, each a rotation about its own centre ``c_k`` and a translation at
every frame time (linear between frames), carry the canonical Gaussians: a Gaussian with
blend weights ``w`` (softmax of its logits) moves to ``sum_k w_k (R_k(t) (x - c_k) + c_k
+ t_k(t))`` and turns by the normalised blend of the bases' quaternions. Turning about the
basis' own centre (SC-GS's control nodes) keeps rotation and translation apart: about the
world origin, a small turn of a part far from it is a large shift. A rigid object whose Gaussians weigh one
basis moves by six numbers per frame, which every one of its Gaussians' photometric
gradients drives together: a spinning textured ball, whose silhouette does not change,
is tracked from its texture as a whole instead of Gaussian by Gaussian.

The bases start as the identity at every frame, and the first frame is pinned to it
(the canonical Gaussians are the scene at the first time). The blend weights start
from the Gaussians' distances to ``K`` k-means centres of the canonical splats.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from snap3d.cameras import quat_to_rotmat


def interpolate_frames(frame_times: Tensor, values: Tensor, times: Tensor) -> Tensor:
    """Values [F,...] given at sorted ``frame_times`` [F], linear in between (held past
    the ends), at ``times`` [N]: [N,...]."""
    if len(frame_times) == 1:
        return values[:1].expand(len(times), *values.shape[1:])
    hi = torch.searchsorted(frame_times, times.contiguous()).clamp(1, len(frame_times) - 1)
    lo = hi - 1
    w = ((times - frame_times[lo]) / (frame_times[hi] - frame_times[lo])).clamp(0, 1)
    w = w.reshape(-1, *([1] * (values.ndim - 1)))
    return values[lo] * (1 - w) + values[hi] * w


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of [...,4] quaternions (w,x,y,z): the rotation b, then a."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def kmeans(points: Tensor, k: int, iterations: int = 10, seed: int = 0) -> Tensor:
    """[k,3] centres of ``points`` [N,3] (N >= k) by Lloyd's iterations from a seeded
    farthest-point start."""
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(len(points), (1,), generator=g))
    chosen = [first]
    dist = (points - points[first]).square().sum(-1)
    for _ in range(k - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, (points - points[nxt]).square().sum(-1))
    centres = points[chosen].clone()
    for _ in range(iterations):
        label = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, label, points)
        counts = torch.bincount(label, minlength=k).to(points)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


class MotionBases(nn.Module):
    """``count`` rigid motions over the frames: raw quaternions [F,K,4] and translations
    [F,K,3] (the first frame's are unused: it is the identity)."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count
        self.rotations = nn.Parameter(torch.zeros(0, count, 4))
        self.translations = nn.Parameter(torch.zeros(0, count, 3))
        self.register_buffer("centres", torch.zeros(count, 3))

    def set_frames(self, frames: int) -> None:
        """Identity bases for ``frames`` frame times."""
        q = self.rotations.new_zeros(frames, self.count, 4)
        q[..., 0] = 1
        self.rotations = nn.Parameter(q)
        self.translations = nn.Parameter(self.translations.new_zeros(frames, self.count, 3))

    def frames(self) -> tuple[Tensor, Tensor]:
        """Unit quaternions [F,K,4] and translations [F,K,3], the first frame the identity."""
        q, t = self.rotations, self.translations
        identity = torch.zeros_like(q[:1])
        identity[..., 0] = 1
        q = torch.cat([identity, q[1:]])
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return q, torch.cat([torch.zeros_like(t[:1]), t[1:]])

    def forward(
        self, frame_times: Tensor, means: Tensor, weights: Tensor, times: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Canonical ``means`` [N,3] with blend ``weights`` [N,K] carried to ``times`` [N].

        Returns:
            positions [N,3] and the blended unit quaternions [N,4] to compose with the
            canonical rotations.
        """
        q, t = self.frames()
        positions = torch.empty_like(means)
        turns = means.new_empty(len(means), 4)
        # one interpolation per distinct time (a step renders one time plus a few samples)
        unique, inverse = torch.unique(times, return_inverse=True)
        qs = interpolate_frames(frame_times, q, unique)  # [U,K,4]
        ts = interpolate_frames(frame_times, t, unique)
        rs = quat_to_rotmat(qs)  # [U,K,3,3]
        for u in range(len(unique)):
            rows = torch.nonzero(inverse == u)[:, 0]
            w = weights[rows]
            local = means[rows, None, :] - self.centres  # [n,K,3]
            moved = torch.einsum("kij,nkj->nki", rs[u], local) + self.centres + ts[u]
            positions[rows] = (w[:, :, None] * moved).sum(1)
            blend = w @ qs[u]
            turns[rows] = blend / blend.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return positions, turns

    @torch.no_grad()
    def hold_after(self, frame: int) -> None:
        """Frames after ``frame`` take its motion (a time curriculum's next frame starts
        where the trained ones end). Continuing their velocity instead turned noise in the
        first frames' rotations into a steady spin of whole bases."""
        if frame + 1 < self.rotations.shape[0]:
            for p in (self.rotations, self.translations):
                p[frame + 1 :] = p[frame]

    def smoothness(self, scale: float = 1.0) -> Tensor:
        """Mean squared second difference over frames of the quaternions and of the
        translations over ``scale``."""
        q, t = self.frames()
        t = t / scale
        if q.shape[0] < 3:
            return q.new_zeros(())
        dq = q[2:] - 2 * q[1:-1] + q[:-2]
        dt = t[2:] - 2 * t[1:-1] + t[:-2]
        return dq.square().sum(-1).mean() + dt.square().sum(-1).mean()
