"""Rigid parts: a 4D scene as a static part plus a few rigidly moving ones.

A deformation field trained on one view per frame carries the splats roughly but drifts
on fast, large motions (a ball spinning 540 degrees). When the scene is made of rigid
objects, its motion has far fewer unknowns: one rotation and one shift per part per frame.
This module finds the parts in a trained field's trajectories and refits their motion
frame by frame, as a SLAM system tracks and maps:

1. ``segment_parts``: splats that move less than a threshold over the video are static;
   the moving ones are clustered by rigidity (spectral clustering of the affinity
   exp(-(std over time of the distance between two splats / scale)^2): two splats on one
   rigid object keep their distance).
2. ``track_and_map``: frames in order; each new frame's part motions start from the
   previous frame's and are fitted to its images with the canonical splats frozen
   (tracking), then the canonical splats are fitted to the frames tracked so far (half the
   steps on the newest) with the motions frozen (mapping). Extrapolating the motion into
   the new frame diverged in our measurements: the shift along the view ray is barely
   seen, and carrying it forward compounds the error.
3. A joint refinement of the canonical splats and every frame's motion over random frames.

Motions are stored per frame as a quaternion [F,P,4] and a shift [F,P,3] about each
part's centre [P,3]; part 0 is the static part and stays at the identity. Between frames
the rotation is blended (normalised lerp, ``blend_quats``) and the shift interpolated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from snap3d.cameras import blend_quats, quat_multiply, quat_to_rotmat
from snap3d.representations.trajectory import between_frames


def segment_parts(
    trajectories: Tensor,
    solid: Tensor,
    parts: int,
    static_motion: float,
    rigidity_scale: float,
    sample: int = 4000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Label splats by their trajectories: 0 static, 1..``parts`` the moving parts.

    Args:
        trajectories: [N,F,3] splat centres at each frame.
        solid: [N] bool, the splats that are not (nearly) transparent: only they are
            clustered; the rest take the part of the nearest clustered trajectory.
        parts: number of moving parts.
        static_motion: a splat moving less than this (largest distance from its first
            position) is static.
        rigidity_scale: distance-change scale of the rigidity affinity.
        sample: at most this many moving splats are clustered (an eigendecomposition of a
            sample x sample matrix).

    Returns:
        [N] long labels.
    """
    from snap3d.representations.splat4d import kmeans

    N = trajectories.shape[0]
    labels = torch.zeros(N, dtype=torch.long, device=trajectories.device)
    travel = (trajectories - trajectories[:, :1]).norm(dim=-1).amax(1)
    moving = travel > static_motion
    candidates = torch.nonzero(moving & solid)[:, 0]
    if parts < 1 or len(candidates) == 0:
        return labels
    if len(candidates) > sample:
        pick = torch.randperm(len(candidates), generator=generator)[:sample]
        candidates = candidates[pick.to(candidates.device)]
    if len(candidates) <= parts:
        clustered = torch.arange(len(candidates), device=labels.device)
    else:
        paths = trajectories[candidates].transpose(0, 1)  # [F,M,3]
        spread = torch.cdist(paths, paths).std(0)  # [M,M]
        affinity = torch.exp(-((spread / rigidity_scale) ** 2))
        degree = affinity.sum(1)
        normalised = affinity / torch.sqrt(degree[:, None] * degree[None])
        _, vectors = torch.linalg.eigh(normalised.double())
        embed = vectors[:, -parts:].float()
        embed = embed / embed.norm(dim=1, keepdim=True).clamp_min(1e-12)
        clustered = torch.cdist(embed, kmeans(embed, parts)).argmin(1)
    # every moving splat (solid or not) takes the part of its nearest clustered trajectory
    movers = torch.nonzero(moving)[:, 0]
    flat = trajectories.reshape(N, -1)
    anchors = flat[candidates]
    for chunk in movers.split(4096):
        nearest = torch.cdist(flat[chunk], anchors).argmin(1)
        labels[chunk] = 1 + clustered[nearest]
    return labels


def axis_angle_quat(w: Tensor) -> Tensor:
    """[...,4] unit quaternions (w,x,y,z) of axis-angle vectors [...,3]."""
    angle = w.norm(dim=-1, keepdim=True)
    half = 0.5 * angle
    # sin(half)/angle -> 1/2 at 0 (its series keeps the gradient finite)
    scale = torch.where(angle > 1e-4, torch.sin(half) / angle.clamp_min(1e-4), 0.5 - angle**2 / 48)
    return torch.cat([torch.cos(half), w * scale], dim=-1)


def move_parts(
    gaussians: dict[str, Tensor],
    labels: Tensor,
    centers: Tensor,
    quats: Tensor,
    shifts: Tensor,
) -> dict[str, Tensor]:
    """The Gaussians ``gaussians`` (raw, as ``SplatModel.splats``) moved by their parts'
    rigid motions: rotation ``quats`` [P,4] about ``centers`` [P,3], then ``shifts``
    [P,3]; ``labels`` [N] index the parts."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    R = quat_to_rotmat(q)  # [P,3,3]
    c = centers[labels]
    local = gaussians["means"] - c
    moved = torch.einsum("nij,nj->ni", R[labels], local) + c + shifts[labels]
    out = dict(gaussians)
    out["means"] = moved
    out["quats"] = quat_multiply(q[labels], gaussians["quats"])
    return out


def parts_at(
    frame_times: Tensor, quats: Tensor, shifts: Tensor, time: float | Tensor
) -> tuple[Tensor, Tensor]:
    """The parts' motion at ``time``, blended between the two frames around it (clamped
    to the first and last): quats [P,4] and shifts [P,3], or [T,P,...] for times [T]."""
    t = torch.as_tensor(time, dtype=frame_times.dtype, device=frame_times.device)
    lo, hi, w = between_frames(frame_times, t.reshape(-1))
    pair = torch.stack([quats[lo], quats[hi]], 2)  # [T,P,2,4]
    weights = torch.cat([1 - w, w], 1)[:, None].expand(-1, pair.shape[1], 2)
    q = blend_quats(pair, weights, pair[:, :, :1])
    s = shifts[lo] * (1 - w[:, :, None]) + shifts[hi] * w[:, :, None]
    return (q, s) if t.dim() > 0 else (q[0], s[0])


def track_and_map(
    canonical: dict[str, Tensor],
    labels: Tensor,
    centers: Tensor,
    frame_views: list[Tensor],
    render_loss: Callable[[dict[str, Tensor], int], Tensor],
    rates: dict[str, float],
    track_steps: int,
    map_steps: int,
    refine_steps: int,
    generator: torch.Generator,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Fit per-frame rigid part motions and the canonical Gaussians, frame by frame.

    Args:
        canonical: the Gaussians at the first frame (raw, as ``SplatModel.splats``); they
            are copied, not changed.
        labels: [N] part of each Gaussian (0 static).
        centers: [P,3] the parts' rotation centres.
        frame_views: per frame, in time order, the indices of its training views.
        render_loss: (moved Gaussians, view index) -> the photometric loss of that view.
        rates: learning rates: "turn" (radians), "shift" (world units) for tracking;
            "refine_turn", "refine_shift" for the joint refinement; and one per Gaussian
            attribute fitted in mapping ("means", "scales", "quats", "opacities", "sh0",
            "shN"; the others stay fixed).
        track_steps, map_steps: Adam steps per frame (the first frame maps 3 x map_steps).
        refine_steps: joint steps over random frames after the last frame.
        progress: called with the number of steps done so far.

    Returns:
        (the fitted Gaussians, quats [F,P,4], shifts [F,P,3]).
    """
    P, F = centers.shape[0], len(frame_views)
    device = centers.device
    params = {k: v.detach().clone() for k, v in canonical.items()}
    fitted = [k for k in params if rates.get(k, 0) > 0]
    for k in fitted:
        params[k].requires_grad_(True)
    groups = [{"params": [params[k]], "lr": rates[k]} for k in fitted]
    mapper = torch.optim.Adam(groups) if groups else None
    moves = torch.ones(P, 1, device=device)
    moves[0] = 0  # the static part stays put
    identity = torch.tensor([1.0, 0, 0, 0], device=device)
    quats = identity.expand(F, P, 4).clone()
    shifts = torch.zeros(F, P, 3, device=device)
    done = 0

    def pick(views: Tensor) -> int:
        return int(views[torch.randint(len(views), (1,), generator=generator)])

    def step_map(frame: int) -> None:
        if mapper is None:
            return
        moved = move_parts(params, labels, centers, quats[frame], shifts[frame])
        loss = render_loss(moved, pick(frame_views[frame]))
        mapper.zero_grad()
        loss.backward()
        mapper.step()

    for f in range(F):
        if f > 0:
            quats[f], shifts[f] = quats[f - 1], shifts[f - 1]
            turn = torch.zeros(P, 3, device=device, requires_grad=True)
            shift = torch.zeros(P, 3, device=device, requires_grad=True)
            tracker = torch.optim.Adam(
                [{"params": [turn], "lr": rates["turn"]}, {"params": [shift], "lr": rates["shift"]}]
            )
            frozen = {k: v.detach() for k, v in params.items()}
            for _ in range(track_steps):
                q, s = nudged(quats[f], shifts[f], turn * moves, shift * moves)
                loss = render_loss(move_parts(frozen, labels, centers, q, s), pick(frame_views[f]))
                tracker.zero_grad()
                loss.backward()
                tracker.step()
            with torch.no_grad():
                quats[f], shifts[f] = nudged(quats[f], shifts[f], turn * moves, shift * moves)
            done += track_steps
        for i in range(map_steps if f > 0 else 3 * map_steps):
            # half on the newest frame, half on a random frame tracked so far
            g = f if i % 2 == 0 else int(torch.randint(f + 1, (1,), generator=generator))
            step_map(g)
        done += map_steps if f > 0 else 3 * map_steps
        if progress is not None:
            progress(done)
    if refine_steps > 0 and F > 1:
        turns = torch.zeros(F, P, 3, device=device, requires_grad=True)
        moved = torch.zeros(F, P, 3, device=device, requires_grad=True)
        refiner = torch.optim.Adam(
            [
                {"params": [turns], "lr": rates["refine_turn"]},
                {"params": [moved], "lr": rates["refine_shift"]},
            ]
        )
        for i in range(refine_steps):
            g = int(torch.randint(F, (1,), generator=generator))
            q, s = nudged(quats[g], shifts[g], turns[g] * moves, moved[g] * moves)
            loss = render_loss(move_parts(params, labels, centers, q, s), pick(frame_views[g]))
            refiner.zero_grad()
            if mapper is not None:
                mapper.zero_grad()
            loss.backward()
            refiner.step()
            if mapper is not None:
                mapper.step()
            if progress is not None and ((i + 1) % 50 == 0 or i + 1 == refine_steps):
                progress(done + i + 1)
        with torch.no_grad():
            quats, shifts = nudged(quats, shifts, turns * moves, moved * moves)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    return {k: v.detach() for k, v in params.items()}, quats.detach(), shifts.detach()


def nudged(quats: Tensor, shifts: Tensor, turn: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Part motions ``quats`` [...,4], ``shifts`` [...,3] followed by a further turn
    (axis-angle [...,3], about each part's current centre) and shift [...,3]."""
    return quat_multiply(axis_angle_quat(turn), quats), shifts + shift


def total_steps(frames: int, track_steps: int, map_steps: int, refine_steps: int) -> int:
    """The steps ``track_and_map`` takes (for a progress bar)."""
    if frames <= 0:
        return 0
    refine = refine_steps if frames > 1 else 0
    return 3 * map_steps + (frames - 1) * (track_steps + map_steps) + refine


__all__ = [
    "axis_angle_quat",
    "move_parts",
    "parts_at",
    "segment_parts",
    "total_steps",
    "track_and_map",
]
