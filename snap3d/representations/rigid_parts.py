"""Rigid parts: a 4D scene as a static part plus a few rigidly moving ones.

A deformation field trained on one view per frame carries the splats roughly but drifts
on fast, large motions (a ball spinning 540 degrees). When the scene is made of rigid
objects, its motion has far fewer unknowns: one rotation and one shift per part per frame.
This module finds the parts in a trained field's trajectories and refits their motion
frame by frame, as a SLAM system tracks and maps:

1. ``segment_parts``: splats that move less than a threshold over the video are static;
   the moving ones are clustered by rigidity (spectral clustering of the affinity
   exp(-(std over time of the distance between two splats / scale)^2): two splats on one
   rigid object keep their distance). ``reassign_parts`` then gives each splat to the
   part whose rigid motion (fitted to the members' trajectories) carries it best, or to
   the static part: the field drags the ground next to a moving object along a little.
2. ``track_and_map``: frames in order; each new frame's part motions start from the
   previous frame's and are fitted to its images with the canonical splats frozen
   (tracking), then the canonical splats are fitted to the frames tracked so far (half the
   steps on the newest) with the motions frozen (mapping). With ``turn_prior`` the turn
   carries on at the last frame's rate and is held near it: the photometric loss alone
   pulls a part back towards the canonical's mistakes on a side it has not mapped yet
   (or whose texture repeats). The shift is not carried on: the shift along the view
   ray is barely seen, and carrying it forward compounded the error in our measurements.
3. A joint refinement of the canonical splats and every frame's motion over random frames;
   with ``smoothness`` it also keeps the parts turning and moving steadily, which ties
   each frame's poorly seen shift along its view ray to its neighbours' (the cameras of
   a monocular video jump between frames, so the neighbours see it from the side). Its
   learning rates decay (``refine_decay``).

With ``shading`` the parts are lit by a fixed distant light (``shade_parts``): a part's
colours change as it turns, by the irradiance (degree-2 SH, fitted) from each splat's
turned normal over that from its canonical one.

Motions are stored per frame as a quaternion [F,P,4] and a shift [F,P,3] about each
part's centre [P,3]; part 0 is the static part and stays at the identity. Between frames
the rotation is blended (normalised lerp, ``blend_quats``) and the shift interpolated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from snap3d.cameras import blend_quats, quat_multiply, quat_to_rotmat
from snap3d.io.splats import SH_C0
from snap3d.render._sh import eval_sh
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


def fit_rigid(source: Tensor, targets: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted least-squares rigid motions (Kabsch): rotations [F,3,3] and translations
    [F,3] taking points ``source`` [M,3] closest to ``targets`` [F,M,3], each point
    weighted by ``weights`` [M]."""
    w = (weights / weights.sum().clamp_min(1e-12))[:, None]
    src_mean = (w * source).sum(0)
    tgt_mean = (w[None] * targets).sum(1)  # [F,3]
    cov = torch.einsum("fmi,mj->fij", (targets - tgt_mean[:, None]) * w[None], source - src_mean)
    U, _, Vt = torch.linalg.svd(cov)
    flip = torch.ones(cov.shape[0], 3, dtype=cov.dtype, device=cov.device)
    flip[:, 2] = torch.sign(torch.linalg.det(U @ Vt))
    R = U @ (flip[..., None] * Vt)
    return R, tgt_mean - torch.einsum("fij,j->fi", R, src_mean)


def reassign_parts(
    trajectories: Tensor, solid: Tensor, labels: Tensor, iterations: int = 2
) -> Tensor:
    """Relabel splats by the rigid motion that carries them best: each moving part's motion
    is fitted to its solid members' trajectories (``fit_rigid``, every frame, members far
    from it weighted down), and every splat takes the part (or the static one) whose
    motion strays least, on average over the frames, from its trajectory; repeated.

    Spectral clustering groups splats that keep their distances, and a deformation field
    drags the splats next to a moving object along with it: a strip of the ground under
    a swinging arm joins the arm and anchors it. Held to the arm's rigid motion, that
    strip strays far more than it does held still.

    Args:
        trajectories: [N,F,3]; solid: [N] bool; labels: [N] from ``segment_parts``.

    Returns:
        [N] long labels (a part that loses all its solid members keeps none).
    """
    labels = labels.clone()
    parts = int(labels.max()) + 1 if len(labels) else 0
    start = trajectories[:, 0]
    still = (trajectories - start[:, None]).norm(dim=-1).mean(1)  # strays held still

    def strays(members: Tensor, weights: Tensor, among: Tensor | slice) -> Tensor:
        """How far the splats ``among`` stray from the rigid motion fitted to ``members``."""
        R, t = fit_rigid(start[members], trajectories[members].transpose(0, 1), weights)
        carried = torch.einsum("fij,nj->nfi", R, start[among]) + t[None]
        return (trajectories[among] - carried).norm(dim=-1).mean(1)

    for _ in range(iterations):
        by_part = torch.full(
            (len(labels), parts), float("inf"), dtype=start.dtype, device=start.device
        )
        by_part[:, 0] = still
        for k in range(1, parts):
            members = torch.nonzero((labels == k) & solid)[:, 0]
            if len(members) < 3:
                continue
            # fitted twice: the second fit weighs members down by how far they stray
            own = strays(members, torch.ones_like(members, dtype=start.dtype), members)
            weights = 1 / (1 + (own / own.median().clamp_min(1e-12)) ** 2)
            by_part[:, k] = strays(members, weights, slice(None))
        labels = by_part.argmin(1)
    return labels


def axis_angle_quat(w: Tensor) -> Tensor:
    """[...,4] unit quaternions (w,x,y,z) of axis-angle vectors [...,3]."""
    angle = w.norm(dim=-1, keepdim=True)
    half = 0.5 * angle
    # sin(half)/angle -> 1/2 at 0 (its series keeps the gradient finite)
    scale = torch.where(angle > 1e-4, torch.sin(half) / angle.clamp_min(1e-4), 0.5 - angle**2 / 48)
    return torch.cat([torch.cos(half), w * scale], dim=-1)


def quat_axis_angle(q: Tensor) -> Tensor:
    """[...,3] axis-angle vectors of unit quaternions [...,4] (w,x,y,z), the shorter way
    round (the inverse of ``axis_angle_quat`` for angles up to pi)."""
    q = q * torch.sign(q[..., :1] + 1e-12)
    v = q[..., 1:]
    n = v.norm(dim=-1, keepdim=True)
    # 2 atan2(n, w) / n -> 2 / w at 0 (kept finite for the gradient)
    scale = torch.where(
        n > 1e-6, 2 * torch.atan2(n, q[..., :1]) / n.clamp_min(1e-6), 2 / q[..., :1]
    )
    return v * scale


def turn_rates(quats: Tensor, steps: Tensor) -> Tensor:
    """[F-1,...,3] the turn from each frame's rotation ``quats`` [F,...,4] to the next, as
    axis-angle per frame interval: divided by ``steps`` [F-1] (the intervals in units of
    their mean), so that a constant spin gives the same rate over uneven frames."""
    inverse = quats * quats.new_tensor([1.0, -1, -1, -1])
    turns = quat_axis_angle(quat_multiply(quats[1:], inverse[:-1]))
    return turns / steps.reshape(-1, *([1] * (turns.dim() - 1)))


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


def flat_light(channels: int = 3) -> Tensor:
    """Irradiance [9,channels] (degree-2 SH coefficients) that is 1 from every side: no
    shading change however the parts turn."""
    light = torch.zeros(9, channels)
    light[0] = 1 / SH_C0
    return light


def shortest_axes(quats: Tensor, scales: Tensor) -> Tensor:
    """[N,3] each Gaussian's shortest axis (its normal when flat): the column of its
    rotation (``quats`` [N,4], raw) along its smallest of ``scales`` [N,3]."""
    R = quat_to_rotmat(quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    return R[torch.arange(len(R), device=R.device), :, scales.argmin(-1)]


def shading_factors(
    normals: Tensor, labels: Tensor, quats: Tensor, light: Tensor, toward: Tensor
) -> Tensor:
    """[N,C] how much brighter each splat is after its part's turn than in the canonical.

    The parts are lit by a fixed distant light, so a surface point's colour is its albedo
    times the irradiance from the side its world normal faces: E(n) = sum_k L_k Y_k(n),
    the SH ``light`` [9,C] up to degree 2 (which holds any distant lighting of a matte
    surface to within a few percent, Ramamoorthi and Hanrahan 2001). The canonical
    colour already holds E(n); turned by R, it becomes E(R n) / E(n) times it. The
    static part (R = I) never changes.

    Args:
        normals: [N,3] canonical normals (any length, either sign).
        labels: [N] part of each splat; quats: [P,4] the parts' rotations.
        toward: [N,3] world directions the splats' seen sides face (to the viewpoint):
            each normal is flipped to face it.
    """
    n = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    turned = torch.einsum("nij,nj->ni", quat_to_rotmat(q)[labels], n)
    side = torch.where((turned.detach() * toward).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    now = eval_sh(2, side * turned, light).clamp_min(0.05)
    before = eval_sh(2, side * n, light).clamp_min(0.05)
    return now / before


def shade_parts(
    moved: dict[str, Tensor],
    normals: Tensor,
    labels: Tensor,
    quats: Tensor,
    light: Tensor,
    viewpoint: Tensor | None,
    centers: Tensor,
    shifts: Tensor,
) -> dict[str, Tensor]:
    """``moved`` (``move_parts``'s Gaussians) with each splat's colour scaled by its
    ``shading_factors``, seen from ``viewpoint`` [3] (None: each normal faces out of
    its part, from the part's moved centre ``centers + shifts`` [P,3]).

    The scale is folded into the SH coefficients: with colour = SH(dir) + 0.5, scaling
    every coefficient by f and adding (f - 1) 0.5 / Y_0 to the degree-0 one scales the
    colour by f from every view direction."""
    if viewpoint is not None:
        toward = viewpoint[None] - moved["means"].detach()
    else:
        toward = moved["means"].detach() - (centers + shifts)[labels]
    f = shading_factors(normals, labels, quats, light, toward)[:, None]  # [N,1,C]
    out = dict(moved)
    out["sh0"] = f * moved["sh0"] + (f - 1) * (0.5 / SH_C0)
    if moved["shN"].shape[1] > 0:
        out["shN"] = f * moved["shN"]
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


class PartFit(NamedTuple):
    """What ``track_and_map`` fits."""

    gaussians: dict[str, Tensor]
    quats: Tensor
    shifts: Tensor
    normals: Tensor | None = None
    light: Tensor | None = None


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
    frame_times: Tensor | None = None,
    turn_prior: float = 0.0,
    smoothness: float = 0.0,
    length_unit: float = 1.0,
    refine_decay: float = 1.0,
    shading: bool = False,
    viewpoints: Tensor | None = None,
) -> PartFit:
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
        frame_times: [F] the frames' times (evenly spaced when None); the turn rates and
            accelerations below are per mean frame interval.
        turn_prior: weight of keeping each part's turn rate (axis-angle per frame, see
            ``turn_rates``) from one frame to the next while tracking; a new frame then
            also starts from the previous frames' turn carried on. Against a surface
            whose texture repeats (a checkered ball) or a side not yet mapped, the
            photometric loss alone pulls a turn back towards the canonical's mistakes.
        smoothness: weight of the parts' turn-rate changes and shift accelerations (in
            ``length_unit`` per frame interval squared) in the joint refinement.
        refine_decay: the joint refinement's learning rates (mapping's too) fall
            exponentially to this fraction of theirs by its last step.
        shading: the parts are lit by a fixed distant light (``shade_parts``): mapping
            and the refinement also fit the light (rate "light") and the splats'
            canonical normals (rate "normals"; they start as ``shortest_axes``), and
            tracking sees the colours they give.
        viewpoints: [V,3] each view's camera centre (the side of a splat that is seen);
            without it each normal faces out of its part.

    Returns:
        ``PartFit``: the fitted Gaussians, quats [F,P,4], shifts [F,P,3], and with
        ``shading`` the normals [N,3] and the light [9,3].
    """
    P, F = centers.shape[0], len(frame_views)
    device = centers.device
    params = {k: v.detach().clone() for k, v in canonical.items()}
    light = None
    if shading:
        params["normals"] = shortest_axes(params["quats"], params["scales"])
        light = flat_light(params["sh0"].shape[-1]).to(device)
    fitted = [k for k in params if rates.get(k, 0) > 0]
    for k in fitted:
        params[k].requires_grad_(True)
    groups = [{"params": [params[k]], "lr": rates[k]} for k in fitted]
    if light is not None and rates.get("light", 0) > 0:
        light.requires_grad_(True)
        groups.append({"params": [light], "lr": rates["light"]})
    mapper = torch.optim.Adam(groups) if groups else None
    moves = torch.ones(P, 1, device=device)
    moves[0] = 0  # the static part stays put
    identity = torch.tensor([1.0, 0, 0, 0], device=device)
    quats = identity.expand(F, P, 4).clone()
    shifts = torch.zeros(F, P, 3, device=device)
    done = 0
    if frame_times is None:
        frame_times = torch.arange(F, dtype=torch.float32, device=device)
    gaps = frame_times[1:] - frame_times[:-1]
    steps = gaps / gaps.mean() if F > 1 else gaps

    def pick(views: Tensor) -> int:
        return int(views[torch.randint(len(views), (1,), generator=generator)])

    def posed(gaussians: dict[str, Tensor], q: Tensor, s: Tensor, view: int, lit) -> dict:
        """The Gaussians moved (and shaded, by the light ``lit``) to a frame's motion."""
        moved = move_parts(gaussians, labels, centers, q, s)
        if lit is None:
            return moved
        eye = viewpoints[view] if viewpoints is not None else None
        return shade_parts(moved, gaussians["normals"], labels, q, lit, eye, centers, s)

    def step_map(frame: int) -> None:
        if mapper is None:
            return
        view = pick(frame_views[frame])
        loss = render_loss(posed(params, quats[frame], shifts[frame], view, light), view)
        mapper.zero_grad()
        loss.backward()
        mapper.step()

    for f in range(F):
        if f > 0:
            quats[f], shifts[f] = quats[f - 1], shifts[f - 1]
            carry = turn_prior > 0 and f > 1
            if carry:  # the last turn rate carried on into the new frame
                rate = turn_rates(quats[f - 2 : f], steps[f - 2 : f - 1])[0].detach()
                quats[f] = quat_multiply(axis_angle_quat(rate * steps[f - 1]), quats[f - 1])
            turn = torch.zeros(P, 3, device=device, requires_grad=True)
            shift = torch.zeros(P, 3, device=device, requires_grad=True)
            tracker = torch.optim.Adam(
                [{"params": [turn], "lr": rates["turn"]}, {"params": [shift], "lr": rates["shift"]}]
            )
            frozen = {k: v.detach() for k, v in params.items()}
            held = light.detach() if light is not None else None
            for _ in range(track_steps):
                q, s = nudged(quats[f], shifts[f], turn * moves, shift * moves)
                view = pick(frame_views[f])
                loss = render_loss(posed(frozen, q, s, view, held), view)
                if carry:
                    new_rate = turn_rates(torch.stack([quats[f - 1], q]), steps[f - 1 : f])[0]
                    loss = loss + turn_prior * (new_rate - rate)[1:].pow(2).sum(-1).mean()
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
        groups = refiner.param_groups + (mapper.param_groups if mapper is not None else [])
        for group in groups:
            group["start_lr"] = group["lr"]
        for i in range(refine_steps):
            for group in groups:
                group["lr"] = group["start_lr"] * refine_decay ** (i / max(refine_steps - 1, 1))
            g = int(torch.randint(F, (1,), generator=generator))
            q, s = nudged(quats[g], shifts[g], turns[g] * moves, moved[g] * moves)
            view = pick(frame_views[g])
            loss = render_loss(posed(params, q, s, view, light), view)
            if smoothness > 0 and F > 2:
                loss = loss + smoothness * motion_roughness(
                    *nudged(quats, shifts, turns * moves, moved * moves), steps, length_unit
                )
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
    normals = params.pop("normals", None)
    return PartFit(
        {k: v.detach() for k, v in params.items()},
        quats.detach(),
        shifts.detach(),
        None if normals is None else normals.detach(),
        None if light is None else light.detach(),
    )


def nudged(quats: Tensor, shifts: Tensor, turn: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """Part motions ``quats`` [...,4], ``shifts`` [...,3] followed by a further turn
    (axis-angle [...,3], about each part's current centre) and shift [...,3]."""
    return quat_multiply(axis_angle_quat(turn), quats), shifts + shift


def motion_roughness(quats: Tensor, shifts: Tensor, steps: Tensor, length_unit: float) -> Tensor:
    """How far the moving parts (all but part 0) are from turning and moving steadily:
    the mean squared change of their turn rates [F-1] plus that of their velocities (in
    ``length_unit`` per frame interval ``steps`` [F-1])."""
    rates = turn_rates(quats[:, 1:], steps)
    velocity = (shifts[1:, 1:] - shifts[:-1, 1:]) / (length_unit * steps[:, None, None])
    turn_changes = (rates[1:] - rates[:-1]).pow(2).sum(-1)
    accelerations = (velocity[1:] - velocity[:-1]).pow(2).sum(-1)
    return turn_changes.mean() + accelerations.mean()


def total_steps(frames: int, track_steps: int, map_steps: int, refine_steps: int) -> int:
    """The steps ``track_and_map`` takes (for a progress bar)."""
    if frames <= 0:
        return 0
    refine = refine_steps if frames > 1 else 0
    return 3 * map_steps + (frames - 1) * (track_steps + map_steps) + refine


__all__ = [
    "PartFit",
    "axis_angle_quat",
    "fit_rigid",
    "flat_light",
    "motion_roughness",
    "move_parts",
    "parts_at",
    "quat_axis_angle",
    "reassign_parts",
    "segment_parts",
    "shade_parts",
    "shading_factors",
    "shortest_axes",
    "total_steps",
    "track_and_map",
    "turn_rates",
]
