"""4D Gaussian splats: canonical splats carried through time by a deformation field.

The canonical Gaussians are a ``SplatModel`` (same parameters, same gsplat strategies).
A ``DeformationField`` maps a canonical mean and a time to offsets of the mean, the
rotation, the log-scales and optionally the opacity logit (4DGaussians): a multi-resolution
HexPlane feeds a small trunk shared by one linear head per attribute; the heads start at
zero, so that the field starts as the identity. Optional per-frame codes (4Real's
per-frame deformation) join the HexPlane features; between training frames they are
interpolated linearly in time. With ``control_points`` (SC-GS's sparse control) the field
moves a few hundred control points instead, each rigidly, and every Gaussian follows a
distance-weighted blend of its nearest controls' motions.

Training starts with a static warm-up (canonical splats only, deformation off), then
trains both with the photometric loss plus the HexPlane regularisers (plane TV, time
smoothness, L1 on the time planes) and the motion regularisers of
``snap3d.representations.trajectory`` (local rigidity, temporal smoothness) on random
Gaussians. A time curriculum helps large motions: the warm-up sees only the first frames
(so that the canonical splats are the scene near its first time, not a blur of every
time), and the window of frames then widens to the whole video while the field learns to
carry the splats along (half of the widening's steps on its newest frames).
``render(cameras)`` renders each camera at ``cameras.times``.

The colours keep the static splats' ``sh_degree`` (3). With one view per frame,
view-dependent colour could stand in for motion (each frame's view direction differs),
but lower degrees did not gain on the bundled scene (5000 steps, test PSNR / trajectory
error): degree 1 against 3, seed 0 25.15 dB / 4.86% against 24.67 / 5.00%, seed 1
25.19 / 5.73% against 25.52 / 5.48%; degree 0 (seed 0) 25.12 / 5.18%.

``export("trajectory-video", ...)`` writes a ``PointTrajectoryVideo``: the surface point
a pixel sees at the first time lies on its ray at the median depth, and it moves as
the Gaussians it sees then move: its displacement to any time t is the alpha-blend
(weights from the geometry at the first time) of the Gaussians' displacements. The
rasterizer composites arbitrary channels, so one pass with the first time's geometry and
the displacements to all T times as 3T "colours" gives every trajectory at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from snap3d.cameras import Cameras, blend_quats, quat_multiply, quat_to_rotmat
from snap3d.data.dataset import SceneDataset
from snap3d.errors import Snap3dError
from snap3d.render import rasterize_gaussians
from snap3d.representations.base import ParamGroup, RenderOutput, SceneMeta, image_batch
from snap3d.representations.hexplane import HexPlane, hold_rows
from snap3d.representations.rigid_parts import (
    move_parts,
    parts_at,
    reassign_parts,
    segment_parts,
    shade_parts,
    total_steps,
    track_and_map,
)
from snap3d.representations.splat import SplatConfig, SplatModel
from snap3d.representations.trajectory import (
    PointTrajectoryVideo,
    between_frames,
    nearest_neighbors,
    point_visibility,
    rigidity_loss,
    rotation_rigidity_loss,
    smoothness_loss,
)
from snap3d.train.registry import register_method


@dataclass
class Splat4DConfig(SplatConfig):
    """4D Gaussian splatting: canonical splats + a HexPlane deformation field."""

    saved_defaults: ClassVar[dict[str, Any]] = {"eps2d": 0.3}
    """Values of the fields a saved run's config lacks: what runs saved before each
    field existed were trained with (``checkpoint.config_from_dict``)."""

    schedule: Literal["auto", "cpu", "gpu"] = "cpu"
    """The 5k-step schedule on every device (``auto`` would give gsplat's 30k on CUDA).
    More steps fit the training frames better and the unseen views worse. On an H100
    (gsplat kernels, bundled scene, seed 0, gsplat's schedule scaled to each step
    count), test PSNR / trajectory error (% of radius) / train PSNR were as follows.
    5000 steps: 24.47 dB / 5.80% / 28.1 dB. 7500: 24.90 / 5.98 / 30.8. 10000: 24.50 /
    5.98 / 31.1, with 76k Gaussians. 20000: 24.03 / 6.66 / 32.8, with 161k. Five seeds
    at 5000 steps spread 24.68 +- 0.24 dB and 5.48 +- 0.37%."""
    eps2d: float = 0.1
    """Blur added to each projected Gaussian's 2D covariance, in pixels² (0.3 in
    ``splat``, as gsplat). 0.1 is about the variance of one pixel's box filter (1/12),
    the footprint of a camera pixel (and of the bundled scenes' supersampled renders;
    Mip-Splatting's 2D filter approximates the same box). At 0.3 no splat projects
    sharper than a Gaussian of std 0.55 px, so every sharp edge (the checkers) keeps
    an error the splats cannot fit. On the bundled scene (seed 0,
    test PSNR / trajectory error) the field scores 25.03 dB / 4.97% against 24.67 /
    5.00%, and with ``rigid_parts`` 3 after it 33.79 / 1.02% against 32.37 / 1.72%.
    The rigid parts alone at 0.1 after the 0.3 fields of seeds 0-2: 33.80 / 0.97%,
    33.01 / 1.05%, 33.41 / 1.15% against 32.37 / 1.72%, 32.08 / 1.67%, 32.35 / 1.75%
    (0.2, seed 0: 33.16 / 1.38%; 0.05, seeds 0 and 1: 33.92 / 0.82%, 33.44 / 0.86%,
    kept at 0.1: below a pixel's box, thinner splats can hide between the pixel
    centres of the training views, and real photos are blurrier than the bundled
    renders). The trajectories gain too: the static disc's error,
    which is only where its points start (their depth), halves (1.94 -> 0.94%).
    Runs saved before this field existed load with 0.3 (``saved_defaults``)."""
    static_fraction: float = 0.05
    """Fraction of the steps spent on the static warm-up (canonical splats only). A long
    warm-up bakes the motion within the first window into a blur: 5000 steps, with
    ``window_fraction`` 0.7, 0.05 gave 24.70 dB and a trajectory error of 5.46% of the
    radius (24k Gaussians) against 23.95 dB and 5.43% for 0.15 with 0.5 (30k)."""
    time_window: float = 0.1
    """Time curriculum: the warm-up trains on the frames in the first ``time_window`` of
    the time range, and the window then widens linearly to all frames over
    ``window_fraction`` of the steps. 1 trains on every frame throughout. 5000 steps,
    seed 0, test PSNR / trajectory error: 0.02 (the first two frames) 23.89 dB / 5.87%,
    0.05 24.94 / 5.58%, against 24.67 / 5.00% for 0.1: no change beyond the spread
    between seeds; 0.02 with a warm-up of 0.15 (750 steps on the first two frames)
    24.12 / 6.17%. In all four (and in every ``control_motion``) the Gaussians of the
    ball at t = 0 have turned 3-8 of its 54 degrees by t = 0.1 and are 13-16 cm off,
    while the training views at every time fit at 24-28 dB: one view per frame is fitted
    without the ball's 3D motion. The ball's 8 x 4 checker repeats every 90 degrees of
    its turn about z, and it turns 54 degrees in the first 0.1 of the time range: a
    canonical ball from frames that far apart averages most of a period."""
    window_focus: float = 0.5
    """While the window widens, this fraction of the steps trains on its newest frames
    (those in its last ``time_window`` of the time range) rather than on any of its
    frames: uniform sampling shows a frame that just joined a window of k frames once in
    k steps, so the field barely tracks the motion into it before the next one joins.
    5000 steps, trajectory error / test PSNR: 0 (window 0.3) 6.31% / 23.98 dB; 0.5
    (window 0.3) 6.14% / 23.96; 0.5 (window 0.5) 5.43% / 23.95; 0.5 (window 0.7) 5.68% /
    23.55; 0.75 (window 0.5) 6.14% / 24.05. Most of the error is the spinning ball, whose
    error varied from 24% to 28% of the radius between these runs. Tried and not kept:
    training only the motion in these steps (canonical splats held, as in a harness with
    a frozen canonical): 24.19 dB / 5.56%, and 23.56 / 6.08% with ``time_window`` 0.02.
    Even from the truth (the canonical initialised from a static splat of 60 views of
    t = 0, no warm-up, no densification) the field turned the ball 5 of its 54 degrees
    by t = 0.1 (25.82 dB / 4.84%): with the field, the canonical is not what stops the
    ball's motion being learned. The same start with motion bases (3x rates,
    ``hold_extrapolate``, control smoothness 1000) turned it 4 degrees (21.65 dB /
    5.98%), where the same bases with the canonical frozen throughout (the harness in
    ``control_motion``) turn it 117 of 137 degrees by t = 0.25: a canonical that also
    trains, even one that starts true, absorbs the ball's turn. But that harness's 117
    degrees hold for its 20 frames only: on all 60 frames (5000 steps) the frozen
    truth's bases turned the ball 16 of 137 degrees by frame 15, and 47 with a first
    window of two frames (``time_window`` 0.02). Also not kept: each frame that joins
    trained alone, motion only, for its first 40 steps (sequential tracking): 23.78 dB /
    6.27%, and 22.26 / 6.47% with ``time_window`` 0.02; with the bases on the frozen
    truth (all 60 frames) 87 of 137 degrees at frame 15, 36 with control smoothness
    1000."""
    window_fraction: float = 0.7
    """A short widening leaves more steps on every frame: frames that join late are
    otherwise under-fitted (train PSNR fell from 31 dB at the first time to 22 at the
    last). Without ``window_focus``, 0.3 (and rigidity 100) against 0.7 (and rigidity
    1): 24.0 against 21.9 dB at 5000 steps; the GPU sweep had 0.3 alone at +1.2 dB.
    With the focus on new frames and a warm-up of 0.15, 0.5 tracked best (see
    ``window_focus``); with a warm-up of 0.05, 0.7 against 0.5: 24.70 against 24.56 dB,
    5.46 against 5.84%.
    (A collapse once blamed on 0.5 looked like the dying trunk that
    ``DeformationField`` now avoids.)"""
    refine_stop_fraction: float = 0.3
    """Densification stops at this fraction of the steps (static splats: 0.7 on the CPU
    schedule, 0.5 on the GPU one). Once the field moves the splats, their view-space
    gradients mostly ask for motion, not for more Gaussians: densifying until 0.7 ended
    with 69k Gaussians at 378 ms/step, stopping at 0.3 with 30k at 190 ms/step and the
    same test PSNR (21.9 dB, 5000 steps). With the later defaults (seed 0), 0.5 gave
    24.81 dB / 5.13% with 46k Gaussians in 1.7x the time, against 24.67 / 5.00% with
    24k."""
    fit_field_bounds: bool = True
    """At the end of the warm-up, span the HexPlane over the canonical splats (robust
    bounding box plus a margin) rather than the scene box."""
    hold_time: bool = True
    """While the window widens, later time cells of the HexPlane copy the window's last
    one (``HexPlane.hold_after``): new frames start from the latest learned motion."""
    hold_extrapolate: bool = False
    """With ``hold_time``, later cells continue the latest cells' change linearly
    (``HexPlane.hold_after``): new frames start from the latest motion carried on at
    its speed, not stopped. A plain hold also lets the time smoothness pull the newest
    cell back towards the one before it (its later neighbour is its own copy), which
    brakes every motion where it is being learned. With the canonical splats frozen at
    the truth (a static splat from 60 views at t = 0) and only the field trained on the
    first 20 frames (1700 steps), the ball turned 11.7 of its 174 degrees with a hold
    and 34.5 with extrapolation (control points: 55 and 80). Off by default: in full
    5000-step runs (12 time cells, seeds 0-2) it gave 25.36 dB / 5.15%, 25.24 / 5.58,
    25.48 / 5.54 against 25.02 / 5.16, 25.19 / 5.98, 25.43 / 5.05: +0.15 dB, the
    trajectories unchanged, within the spread between seeds. The canonical ball that the
    warm-up makes is a blur, and the full runs' ball still hardly turns. With control
    points, seed 0 gave 25.26 dB / 6.68%."""
    plane_features: int = 16
    """Channels of every HexPlane plane."""
    plane_resolution: int = 32
    """Spatial resolution of the coarsest planes (over the scene box); 4DGaussians uses
    64, halved here so that CPU steps stay cheap."""
    plane_time_resolution: int = 0
    """Time resolution of the planes; 0 gives one cell per ``frames_per_time_cell``
    training frames (at least 2). 4DGaussians uses 25 for D-NeRF scenes (50-200
    frames). On the bundled 60-frame video, cells that pool the views of several frames
    did better. Test PSNR / trajectory error at 5000 steps, seeds 0, 1, 2:
    - 12 cells: 25.02 dB / 5.16%, 25.19 / 5.98, 25.43 / 5.05 (mean 25.21 / 5.40);
    - 25 cells: 24.41 / 5.43, 25.05 / 5.73, 25.26 / 5.86 (mean 24.91 / 5.67);
    - 60 cells (one per frame), seed 0: 23.78 / 7.44 on the CPU, 23.83 / 7.79 on a GPU.
    A fixed 12 would not follow a 150-frame capture's motion that turns back within 12
    frames, so the cells scale with the frames."""
    frames_per_time_cell: float = 5.0
    """Training frames per time cell of the planes when ``plane_time_resolution`` is 0."""
    plane_multires: tuple[int, ...] = (1, 2)
    """Spatial resolution multipliers: one set of six planes each."""
    deform_width: int = 64
    """Width of the two-layer trunk shared by the (linear) heads."""
    deform_scales: bool = False
    """Deform scales (4DGaussians does; rigid motion needs only positions and rotations).
    Off by default: on monocular video the scale offsets grew without bound (log-scale
    offsets of +3 on average while the canonical scales shrank), and the densification
    reads the canonical scales."""
    deform_opacity: bool = False
    """Also deform opacities (4DGaussians leaves them fixed)."""
    control_points: int = 0
    """Sparse control (SC-GS): 0 lets the field move every Gaussian (4DGaussians); K > 0
    samples K control points from the canonical splats at the end of the warm-up
    (farthest points among the solid ones), the field gives each a rigid motion (a
    translation and a rotation about itself), and every Gaussian follows a blend of the
    motions of its ``control_neighbors`` nearest control points (linear blend skinning,
    Gaussian weights of the distance). Few motions to learn, each seen by many pixels,
    and locally rigid by construction. Off by default: a few hundred controls spread
    over a whole captured room would be too coarse for a small moving subject. On the
    bundled scene (5000 CPU steps, test PSNR / trajectory error), 512 controls against
    none: with 25 time cells, seed 0 24.94 dB / 5.09% against 24.41 / 5.43, seed 1
    25.30 / 5.04 against 25.05 / 5.73; with 12 cells, seeds 0-2 25.06 / 5.18, 25.71 /
    4.80, 25.43 / 5.13 against 25.02 / 5.16, 25.19 / 5.98, 25.43 / 5.05. Controls
    sampled once, at the end of the warm-up, did worse (23.5 dB, 6.9-10%): see
    ``control_resample``."""
    control_motion: Literal["field", "frames", "bases"] = "field"
    """Where the control points' rigid motions come from: ``field`` reads them from the
    HexPlane field at the controls' positions; ``frames`` keeps a free motion per
    control and training frame (linear in time between frames), which a frame's
    photometric gradient moves directly, with its own regularisers (``control_rigidity_weight``,
    ``control_smoothness_weight``) instead of the planes'. When the controls are sampled
    again, the new ones take the motions blended from the old ones. ``bases`` blends a
    few rigid motions per frame shared by many controls (``motion_bases``).
    Measured on the bundled scene, canonical splats frozen at the truth (a static splat
    from 60 views of t = 0, 33.2 dB), only the motion trained on the first 20 frames (1700
    steps, 512 controls; its ``time_window`` of 0.1 of those frames' times holds two
    frames, 9 degrees of the ball's turn): the ball turned 50 of its 137 degrees at
    frame 15 with ``field``, 73 with ``frames``, 90 with ``frames`` and 3x its learning
    rates (99 in 3400 steps). A free rigid transform of the ball's own Gaussians
    recovers 27 degrees from one frame in 75 steps, so the photometric signal is there.
    In full 5000-step runs (seed 0) ``frames`` did worse: 21.1 dB / 8.9% (3x rates),
    21.8 / 7.4% (and ``hold_extrapolate``) against 24.7 / 5.0% for the defaults. With
    one view per frame each frame's free motions fit that view: the static disc's
    controls drift (its error 4-6% against 1.8%) and far views at late times shatter it.
    10x the rigidity and 100x the smoothness made it worse (20.0-20.3 dB, 11%), and so
    did 10x the rigidity with ``control_arap_weight`` 100 (19.0 dB, 11%). Off by
    default."""
    motion_bases: int = 16
    """``control_motion`` ``bases`` (Shape of Motion's motion bases): this many rigid
    motions per training frame, each pivoting about a k-means centre of the dense solid
    canonical splats; every control moves by a softmax blend of them, its weights learned
    (they start from the distances to the pivots). The bases are placed afresh whenever
    the controls are sampled, each taking the motion its new pivot had. A basis is shared
    by every control that weighs it, so a rigid part's motion at a frame pools all its
    pixels, however few views that frame has. Off by default: below the field on the
    bundled scene. With the canonical splats frozen at the truth (the harness in
    ``control_motion``), 512 controls, 3x rates: the ball turned 114 of 137 degrees at
    frame 15 (``frames`` 90, ``field`` 50); its two main bases 117 and 135. Full 5000-step
    runs, seed 0, 3x rates, test PSNR / trajectory error (ball, cube, disc):
    - bases placed once, when the warm-up ends: 17.6-18.0 dB / 12.6-13.2%. The warm-up's
      splats are a random cloud, 12 of 16 pivots fell on floaters, one basis moved the
      whole scene and bases with opposite motions cancelled in the blends;
    - placed afresh (as now): 20.0 / 12.4%; with ``hold_extrapolate`` 21.1 / 9.4% (ball
      36%, cube 4.7, disc 5.2);
    - and ``control_smoothness_weight`` 1000: 23.10 / 7.80% (ball 32%, cube 2.4, arm
      2.9, disc 4.3), seed 1 22.77 / 7.74%; 10000: 19.4 / 12.4%. Holding the first
      frame's motions at the identity (canonical = first frame) on top: 22.5 / 12.5%.
      On top of smoothness 1000: ``basis_weight_lr`` 0.05 22.64 / 7.60%;
      ``control_rigidity_weight`` 1000 18.9 / 12.7%; ``basis_spread`` 0.1 (nearly one
      basis per control) 21.75 / 7.54% (ball 24.7%, cube 2.4, arm 12.1, disc 4.1), seed
      1 21.33 / 10.66%; ``time_window`` 0.02 without ``hold_extrapolate`` 20.97 / 8.49%.
    Against 24.67 / 5.00% (ball 21%, cube 7.1, disc 1.8) for the defaults: the cube and
    the arm track better, the static disc drifts (one view per frame lets its bases
    wander along the view rays) and the ball does not keep up.
    Tried and not kept: the bases' table as curves in time (a constant plus 6 sine and
    cosine pairs of frequencies k pi / 2, least-squares refitted at each placement), so
    that every frame's view fits every coefficient: 22.42 dB / 5.74% (ball 20.2%, cube
    3.3, disc 3.0); the same per control (``frames``) 21.69 / 6.03%; with
    ``time_window`` 0.02 18.75 / 8.03%. With the canonical frozen at the truth (the
    harness above) the curves turned the ball only 31 of 137 degrees.
    What the bases lack, from a probe outside the trainer (canonical frozen, one rigid
    motion per part, each frame in turn fitted alone for 40 Adam steps from the motion
    of the frame before; L1 to its image; points' error over all 60 frames, 2% of the
    radius is 2.4 cm):
    - true canonical, true parts: the ball follows its whole 540 degrees (about 1 degree
      off, its points 0.5-7 cm); carrying the last change on instead diverged by frame 20;
    - true canonical, the disc known to be static, the moving splats split into 3 by
      k-means: ball 2-7 cm, arm about 1, the cube lost from frame 40 (20 cm);
    - true canonical, 16 or 64 k-means parts over all splats, none held still: the disc
      drifts 30 cm, the ball 30-40 from mid-video;
    - true parts, the canonical of a default run (its splats at t = 0): cube 2-5 cm, arm
      1-3, the ball lost (30 cm); the same from the truth-initialised run of
      ``window_focus``: the ball lost too (24 cm at frame 10).
    - true parts, each frame tracked then mapped (80 Adam steps on the colours over the
      frames tracked so far, half on the newest): from the true splats with the ball's
      colours wiped to their mean, the ball stays 0.6-6 cm off through all 60 frames
      (the arm slipped to 12 cm at frame 40, then came back);
      from the defaults' canonical it is lost (15-30 cm): its ball splats fill the
      sphere (median radius 0.75 of the ball's, against 0.90 for the truth). Mapping
      the positions and shapes too kept it at 6-8 cm to the end (these errors include
      the splats' own mapping shifts: 1-5 cm on the still disc).
    - The defaults' field trajectories segment the scene: splats that move more than 5
      cm over the video are the moving ones (1.4% of the disc's flagged, at most 1.2%
      of each moving part's missed), and a spectral clustering of those by how much
      their pairwise distances vary over time gives 3 parts (of 4000 sampled): the
      ball's 1750 with 4 disc splats, the cube's 897 with 27 others, the arm's 1122
      with 124 disc and 66 cube splats.
    - Those parts, the defaults' canonical, tracking and mapping positions, shapes and
      colours, then 2000 joint steps over all frames (poses too): test PSNR 23.30 dB
      (22.47 before the joint steps; poses slerped between frames), trajectory error
      1.67% of the radius (ball 7.7, cube 2.7, arm 3.9, disc 0) from the truth's own
      start points, against 5.00% for the defaults through the export (whose start
      points alone are 2.5% off at t = 0). With the true parts: 23.63 dB / 1.40%
      before the joint steps. From the seed-1 defaults run: 22.87 dB / 1.46%. Twice
      the steps per frame (80 tracking, 160 mapping) lost the arm and the ball: 19.77
      dB / 7.0% (arm 48%, ball 17.6%): the mapping's free positions need holding.
    So frame-by-frame rigid tracking works once the rigid parts (a static one among
    them) are known and the canonical is a surface, not a filled blur; the soft bases
    find neither, and joint training blurs even a true canonical ball."""
    basis_spread: float = 0.25
    """The controls' first basis weights: a softmax of -d^2 / (2 s^2), d the distance to
    each pivot and s this fraction of the mean distance between neighbouring pivots."""
    basis_weight_lr: float = 1e-2
    """Learning rate of the controls' basis weights (logits), decayed 10x."""
    control_shift_lr: float = 1e-3
    """Learning rate of the per-frame control translations (times the camera extent),
    decayed 10x over the run."""
    control_turn_lr: float = 1e-2
    """Learning rate of the per-frame control rotations (quaternion offsets), decayed
    10x."""
    control_rigidity_weight: float = 100.0
    """Per-frame control motions: squared change of the distances between neighbouring
    controls, over every frame trained so far, against the canonical distances."""
    control_arap_weight: float = 0.0
    """Per-frame control motions: as-rigid-as-possible between neighbouring controls, in
    each control's own frame (the offsets to its neighbours turn with its rotation), over
    the frames trained so far. Ties the controls' rotations to the motion around them."""
    control_smoothness_weight: float = 100.0
    """Per-frame control motions: squared second difference over frames of the controls'
    positions and quaternion offsets, over the frames trained so far."""
    control_neighbors: int = 4
    control_resample: bool = True
    """Sample the control points afresh from the canonical splats after every
    densification step too (until it stops): the warm-up's splats are a rough cloud, and
    the field is a function of position, so new controls take up the learned motion."""
    frame_code_dim: int = 0
    """Per-frame deformation code size (4Real); 0 turns the codes off."""
    grid_lr: float = 1e-2
    """HexPlane learning rate, decayed 10x over the run. 4DGaussians uses 1.6e-3 over
    20k GPU steps; at that rate the field hardly moved in a 1000-step CPU run. 5000 steps
    on the CPU, seeds 0, 1, 2, test PSNR / trajectory error: 1e-2 gave 24.41 / 5.48%,
    25.05 / 5.76%, 25.26 / 5.91%; 3e-2 gave 23.71 / 5.22%, 24.61 / 6.20%, 24.63 /
    5.46%. That is +0.5 dB in every pair (also on a GPU: 25.03 against 24.47 dB, 5.05
    against 5.80%), and no change in the trajectory error beyond the spread between
    seeds. 1e-1 collapsed: 17-18 dB, the ball's error 67% of the radius."""
    deform_lr: float = 1e-3
    """Learning rate of the trunk and the position head (times the camera extent: they
    move things in world units) and of the other heads (as is), decayed 10x."""
    frame_code_lr: float = 1e-3
    plane_tv_weight: float = 1e-4
    time_smoothness_weight: float = 1e-2
    time_l1_weight: float = 1e-4
    rigidity_weight: float = 100.0
    """Local rigidity of neighbouring Gaussians' trajectories (0 to turn off). In squared
    world units, so small: 100 (with 100 for smoothness) gained 0.8 dB over 1 at 2000
    steps, and is part of the 24.0 dB above; 1000 lost the gain."""
    rotation_rigidity_weight: float = 0.0
    """As-rigid-as-possible in the Gaussians' own frames (Dynamic 3D Gaussians): the
    offsets from a Gaussian to its neighbours turn with the Gaussian's rotation between
    neighbouring frames (0: off). Stricter than distances alone, which a swirl or a
    shear keeps; it also ties the rotation offsets to the motion around them. Off by
    default: on the bundled (monocular) scene at 5000 steps, 1000 gave 24.0 dB and a
    trajectory error of 6.3% of the radius, 10000 22.0 dB and 8.6%, against 24.0 dB and
    5.4% without it."""
    motion_smoothness_weight: float = 100.0
    """Second difference of Gaussians' trajectories over neighbouring frames (0: off). At
    the time curriculum's newest frame (and the last frame) it spans the two frames
    before, not the frame after: past the window the motion is a copy of the newest
    frame's, and a second difference across it held that frame's motion back (with a
    perfect, frozen canonical scene the field turned the ball 1.1 of its 9.2 degrees at
    the second frame; without the term, 3.0). 5000 steps: 24.70 -> 24.23 dB, trajectory
    5.46% -> 5.13% of the radius (23.71 dB and 5.22% in a run that differed only by float
    rounding: runs spread by about 0.5 dB); with the term off, 24.05 dB and 5.06%."""
    offset_weight: float = 0.1
    """L1 on the position offsets (over the camera extent): motion only where needed.
    Without it the field learned large offsets that barely depend on time (a second,
    faster-learning copy of the canonical positions) and warped static regions."""
    motion_samples: int = 256
    """Gaussians drawn per step for the motion regularisers."""
    rigidity_neighbors: int = 8
    rigidity_span: bool = False
    """Rigidity also between the step's time and a random time of the window trained so
    far, not only the neighbouring frames: distances of rigid parts hold over long
    intervals, which the frame-to-frame term barely sees. Off by default: a strong prior
    against non-rigid motion, and on the bundled (all-rigid) scene at 5000 steps it
    helped with rigidity 1 and window 0.7 (21.9 -> 22.3 dB, trajectory 6.3 -> 5.8%) but
    not with the defaults (24.0 -> 23.3 dB, 6.3 -> 6.5%)."""
    rigid_parts: int = 0
    """After the field's steps, refit the motion as this many rigid moving parts plus a
    static one (``snap3d.representations.rigid_parts``): segment the field's
    trajectories, then track each frame's part motions in order and map the canonical
    splats between frames, then refine both jointly. 0 keeps the field. Only for
    scenes of rigid objects (a person is not one); set it to the number of moving
    objects. The trajectory export then carries each pixel's point rigidly with the
    part most of its opacity comes from.

    On the bundled scene (3 parts, after the 5000-step field defaults of seeds 0, 1 and
    2, which score 25.03 dB / 4.97%, 25.69 / 5.07% and 25.56 / 5.22% through
    ``bench/splat4d.py``): 33.79 dB / 1.02%, 33.43 / 1.06% and 33.82 / 1.01%, in about
    750 s more on one thread. With gsplat's ``eps2d`` 0.3 (session 15): 32.37 / 1.72%,
    32.08 / 1.67% and 32.35 / 1.75%. Unshaded with 2000 refinement steps (session 14):
    30.87 / 1.65%, 29.27 / 1.74% and 30.23 / 1.76%. Without the turn prior, the
    smoothness, the reassignment and the decaying rates too (session 13's stage):
    23.08 / 3.23%, 22.06 / 3.20% and 23.98 / 2.24%.

    What each piece did (seed 0 unless said; test dB / trajectory %):
    - tracking alone left the checkered ball 19 deg behind by frame 2: the cameras jump
      (frame 2 looks from 117 deg away) onto sides the field's canonical got wrong, and
      the photometric loss pulled the turn back to the field's own lagging spin. The
      turn prior (``part_turn_prior``) carries the last turn rate on: 23.75 / 2.00%
      (ball 11.7 -> 3.0%).
    - ``part_smoothness`` in the refinement ties each frame's barely seen shift along
      its view ray to its neighbours': 28.71 / 1.77%; seed 2 29.00 / 1.72%.
    - seed 1 then still lost its arm (14.5%; 24.77 / 3.48%): the clustering had put 248
      splats of the disc under it in the arm's part, anchoring it. ``part_reassign``
      took them back: 29.19 / 1.65% (arm 1.1%).
    - rates decaying to 0.1 over the refinement (``part_refine_decay``), seeds 0-2:
      30.87 / 1.65%, 29.27 / 1.74%, 30.23 / 1.76% against 29.39 / 1.70%, 29.19 / 1.65%,
      29.19 / 1.71% at constant rates.
    - shading (``part_shading``): the bundled scene is lit by one light plus ambient,
      and unshaded parts kept their colours as they turned: 31.53 / 1.69% (seed 1
      31.52 / 1.67%); then 4000 refinement steps: 32.37 / 1.72% (seed 1 32.08 / 1.67%).
    - not kept, shaded: an L1 between the rendered opacity and the images' alpha
      (weight 1), 31.62 / 1.90% against 32.37 / 1.72%; canonical normals held at the
      splats' shortest axes, 31.98 / 1.71%; L1 + 0.2 D-SSIM, 32.39 / 1.75%; the
      canonical's means and scales rates halved, 31.73 / 1.69%, doubled, 28.62 / 3.00%
      (the arm slipped; seed 1 32.08 / 1.79%). Unshaded, a further 2000-3000 steps after the
      refinement with gsplat's densification (24k -> 56k splats) gained nothing over
      the same steps without it (31.04 against 31.07 dB; shaded 32.23 against 32.09).
    - ``eps2d`` 0.1 instead of 0.3 (see it): 33.80 / 0.97% (seed 1 33.01 / 1.05%).
    - not kept, shaded, at ``eps2d`` 0.3: the rates decaying to 0.03 or 0.01 instead of
      0.1, 31.87 / 1.66% and 31.73 / 1.64%; SH degree 2 or 1 in this stage, 32.47 /
      1.71% and 32.30 / 1.71%.
    - not kept: the first frame held at the identity in the refinement (29.03 / 1.82%;
      with decay 30.48 / 1.89%); splitting the largest 30% of the splats first
      (30.72 / 1.65%); the training loss (D-SSIM, random backgrounds) instead of L1
      (30.62 / 1.64%); decay to 0.03 (30.66 / 1.70%); 160 mapping steps a frame
      (30.89 / 1.70%, 40% slower); smoothness 30 (30.89 / 1.66%). 4000 refinement
      steps gave 31.11 / 1.67% (+0.24 dB for about 100 s more).

    Tried earlier and worse (session 13, against 3.23-3.44%): 80 tracking steps, 4000
    refinement steps without the smoothness, a soft constant-velocity prior on the
    whole motion in tracking (weight 0.3: 7.7%; the shift along the view ray is barely
    seen, and carrying it on compounds its error), a slower means rate, filming the
    export's first frame at the training resolution, supersampling it, and a second
    tracking pass."""
    part_static_motion: float = 0.044
    """Splats whose field trajectory strays less than this fraction of the scene radius
    (half the diagonal of the solid splats' box at the first frame) from its start are
    static."""
    part_rigidity_scale: float = 0.0178
    """Rigid-part clustering: two splats belong together when their distance varies over
    the video by well under this fraction of the scene radius."""
    part_reassign: int = 2
    """Rigid parts: rounds of relabelling each splat by the part whose rigid motion,
    fitted to its members' field trajectories, carries it best (``rigid_parts.
    reassign_parts``), after the clustering. 0 keeps the clusters."""
    part_track_steps: int = 40
    """Rigid parts: Adam steps fitting each new frame's part motions (splats frozen)."""
    part_map_steps: int = 80
    """Rigid parts: Adam steps fitting the splats after each frame is tracked, half on
    it and half on random earlier frames (motions frozen)."""
    part_refine_steps: int = 4000
    """Rigid parts: joint steps on the splats and all frames' motions at the end. Shaded
    (``part_shading``, ``eps2d`` 0.3), seed 0: 31.53 dB / 1.69% at 2000, 32.37 / 1.72% at
    4000 (about 130 s more on one thread), 32.46 / 1.68% at 6000."""
    part_refine_decay: float = 0.1
    """Rigid parts: the refinement's learning rates fall exponentially to this fraction
    of theirs by its last step. Seed 0: 30.87 dB / 1.65% at 0.1, against 29.39 / 1.70% at
    1 (constant rates)."""
    part_turn_prior: float = 0.25
    """Rigid parts: while tracking, the weight of keeping each part's turn rate from one
    frame to the next (``rigid_parts.track_and_map``); a new frame then starts from the
    last turn carried on. 0 tracks each frame from the previous one's pose."""
    part_smoothness: float = 10.0
    """Rigid parts: in the joint refinement, the weight of the parts' turn-rate changes
    and shift accelerations between frames."""
    part_shading: bool = True
    """Rigid parts: the parts are lit by a fixed distant light, so a part's colours change
    as it turns (a spinning ball's side turned to the light brightens): each splat's
    colour is scaled by the irradiance from its turned normal over that from its
    canonical normal (``rigid_parts.shade_parts``); the light (degree-2 SH) and the
    normals (starting as the splats' shortest axes) are fitted with the splats. Each
    camera sees the side of a splat that faces it, so shaded parts render one camera
    at a time. The bundled scene is Lambertian under one light plus ambient (a point
    on the spinning ball's equator goes from 0.6 to 0.8 of its albedo); unshaded, the
    canonical colours averaged the frames and the view-dependent SH faked the rest
    from the training views (test 30.87 dB, training views 34.5). Seeds 0 and 1, with
    2000 refinement steps: 31.53 / 1.69% and 31.52 / 1.67% against 30.87 / 1.65% and
    29.27 / 1.74% unshaded."""
    visibility_tolerance: float = 0.02
    """Trajectory export: a point is hidden when the surface is nearer by this fraction
    of its depth."""
    start_depth: Literal["median", "expected"] = "median"
    """Trajectory export: where on its ray a pixel's first-frame point starts. The
    expected depth averages every Gaussian the pixel sees, so at an object's edge it lies
    between the object and what is behind it; the median depth (where the accumulated
    opacity reaches half the pixel's) lies on one of them, and the visibility test
    then compares against median depths too. On three 5000-step runs of the bundled scene
    the median lowered the trajectory error's mean by 0.03-0.05 points of the radius (the
    disc's by 0.04-0.10; first frame 2.70 -> 2.61%), its median from 1.16 to 1.10%, and
    raised the visibility agreement (0.889 -> 0.894); the export takes about 2x as long."""


class DeformationField(nn.Module):
    """Offsets of Gaussian attributes at a time, from a HexPlane and tiny heads.

    Args:
        config: the model config (plane sizes, widths, what to deform).
        bounds: [2,3] scene box the planes span.
        time_range: (t0, t1) of the scene.
        time_resolution: the planes' time cells; default ``time_cells(config, 0)``.
    """

    def __init__(
        self,
        config: Splat4DConfig,
        bounds: Tensor,
        time_range: tuple[float, float],
        time_resolution: int | None = None,
    ):
        super().__init__()
        self.grid = HexPlane(
            bounds,
            time_range,
            feature_dim=config.plane_features,
            resolution=config.plane_resolution,
            time_resolution=time_resolution or time_cells(config, 0),
            multires=config.plane_multires,
            generator=torch.Generator().manual_seed(0),
        )
        width = config.deform_width
        # Leaky: with plain ReLUs the trunk could die (every unit of its last layer off
        # for every Gaussian: the field then outputs a constant and no gradient reaches
        # the planes again). The regularisers all favour no motion, and Adam's steps do
        # not shrink with the gradient: 3 of 4 inspected 5000-step runs had died (16 dB,
        # no motion), and the one that had not kept 23% of its last layer alive.
        self.trunk = nn.Sequential(
            nn.Linear(self.grid.output_dim + config.frame_code_dim, width),
            nn.LeakyReLU(0.01),
            nn.Linear(width, width),
            nn.LeakyReLU(0.01),
        )
        outputs = {"means": 3, "quats": 4}
        if config.deform_scales:
            outputs["scales"] = 3
        if config.deform_opacity:
            outputs["opacities"] = 1
        self.heads = nn.ModuleDict({name: _head(width, n) for name, n in outputs.items()})
        self.frame_codes = nn.Parameter(torch.zeros(0, config.frame_code_dim))
        self.register_buffer("frame_times", torch.zeros(0))
        # control_motion "frames": each control's own rigid motion at each frame, a
        # translation [F,K,3] and a quaternion offset from the identity [F,K,4];
        # "bases": the same per motion basis [F,B,*], each pivoting about its own point,
        # and every control's weights (logits [K,B]) over the bases.
        rows = {"frames": config.control_points, "bases": config.motion_bases}
        self.table_controls = rows.get(config.control_motion, 0)
        self.control_shifts = nn.Parameter(torch.zeros(0, self.table_controls, 3))
        self.control_turns = nn.Parameter(torch.zeros(0, self.table_controls, 4))
        bases = config.motion_bases if config.control_motion == "bases" else 0
        self.basis_logits = nn.Parameter(torch.zeros(config.control_points if bases else 0, bases))
        self.register_buffer("basis_pivots", torch.zeros(bases, 3))

    def set_frames(self, times: Tensor) -> None:
        """Give the field one (zero) code, and with per-frame control motions one
        (identity) motion per control, per frame time [F] (sorted, distinct)."""
        self.frame_times = times.to(self.frame_times)
        dim, F, K = self.frame_codes.shape[1], len(times), self.table_controls
        self.frame_codes = nn.Parameter(self.frame_codes.new_zeros(F, dim))
        self.control_shifts = nn.Parameter(self.control_shifts.new_zeros(F, K, 3))
        self.control_turns = nn.Parameter(self.control_turns.new_zeros(F, K, 4))

    def frame_code(self, times: Tensor) -> Tensor:
        """[N,D] codes at times [N]: linear between the codes of the nearest frames."""
        lo, hi, w = between_frames(self.frame_times, times)
        return self.frame_codes[lo] * (1 - w) + self.frame_codes[hi] * w

    def control_motion(self, times: Tensor, controls: Tensor) -> tuple[Tensor, Tensor]:
        """The rigid motions at times [U] of ``controls`` [K,3] (the first K of the
        table's): shifts [U*K,3] and quaternion offsets [U*K,4] (as the field's heads
        give them), the table linear in time between frames. With motion bases, each
        control moves as the blend of the bases' motions that its weights give."""
        count = len(controls)
        lo, hi, w = between_frames(self.frame_times, times)
        w = w[:, :, None]
        bases = self.basis_pivots.shape[0] > 0
        shifts = self.control_shifts if bases else self.control_shifts[:, :count]
        turns = self.control_turns if bases else self.control_turns[:, :count]
        shift = shifts[lo] * (1 - w) + shifts[hi] * w  # [U,K or B,3]
        turn = turns[lo] * (1 - w) + turns[hi] * w
        if not bases:
            return shift.reshape(-1, 3), turn.reshape(-1, 4)
        q = turn + turn.new_tensor([1.0, 0.0, 0.0, 0.0])
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # [U,B,4]
        pivots = self.basis_pivots
        local = controls[:, None] - pivots  # [K,B,3]
        turned = torch.einsum("ubij,kbj->ukbi", quat_to_rotmat(q), local)
        moved = turned + (pivots + shift)[:, None]  # [U,K,B,3]
        weights = torch.softmax(self.basis_logits[:count], dim=-1)  # [K,B]
        moved = (weights[None, :, :, None] * moved).sum(2)
        # in the hemisphere of each control's heaviest basis
        ref = q[:, weights.argmax(-1), None]  # [U,K,1,4]
        blend = blend_quats(q[:, None], weights[None], ref)  # [U,K,4]
        blend = blend - blend.new_tensor([1.0, 0.0, 0.0, 0.0])
        return (moved - controls).reshape(-1, 3), blend.reshape(-1, 4)

    @torch.no_grad()
    def hold_after(self, t: float, extrapolate: bool = False) -> None:
        """Continue the motion past time ``t`` (a time curriculum's window): the planes'
        later time cells (``HexPlane.hold_after``) and the per-frame control motions of
        later frames copy the latest ones, or with ``extrapolate`` continue their last
        change linearly."""
        self.grid.hold_after(t, extrapolate)
        if self.table_controls == 0 or len(self.frame_times) < 2:
            return
        last = self.frames_until(t) - 1
        if last < 0 or last + 1 >= len(self.frame_times):
            return
        for table in (self.control_shifts, self.control_turns):
            hold_rows(table, last, extrapolate)

    def frames_until(self, t: float) -> int:
        """How many frames lie at or before time ``t``."""
        return int((self.frame_times <= t + 1e-6).sum())

    def forward(self, means: Tensor, times: Tensor) -> dict[str, Tensor]:
        """Offsets of the Gaussians with canonical ``means`` [N,3] at ``times`` [N].

        Returns:
            {"means": [N,3], "quats": [N,4], "scales": [N,3] (log), and with opacity
            deformation "opacities": [N] (logit)}, added to the canonical parameters.
        """
        features = self.grid(means, times)
        if self.frame_codes.shape[1] > 0 and len(self.frame_times) > 0:
            features = torch.cat([features, self.frame_code(times)], dim=-1)
        hidden = self.trunk(features)
        out = {name: head(hidden) for name, head in self.heads.items()}
        if "opacities" in out:
            out["opacities"] = out["opacities"][:, 0]
        return out

    def regularisers(self) -> dict[str, Tensor]:
        """Unweighted HexPlane regularisers: plane TV, time smoothness, time-plane L1."""
        return {
            "plane_tv": self.grid.total_variation(),
            "time_smoothness": self.grid.time_smoothness(),
            "time_l1": self.grid.time_l1(),
        }


def _head(width: int, out: int) -> nn.Linear:
    """A linear head that starts at zero, so that the field starts as the identity."""
    head = nn.Linear(width, out)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class Splat4DModel(SplatModel):
    """Canonical Gaussians (a SplatModel) deformed over time by a DeformationField."""

    method_name = "splat4d"

    def __init__(self, config: Splat4DConfig, scene: SceneMeta):
        if config.frames_per_time_cell <= 0:
            raise Snap3dError(
                f"frames_per_time_cell must be positive, not {config.frames_per_time_cell}"
            )
        motion = config.control_motion
        if motion != "field" and config.control_points <= 0:
            raise Snap3dError(f"control_motion '{motion}' needs control_points > 0")
        if motion == "bases" and config.motion_bases < 1:
            raise Snap3dError(f"motion_bases must be at least 1, not {config.motion_bases}")
        if motion != "field" and (config.deform_scales or config.deform_opacity):
            raise Snap3dError(
                f"control_motion '{motion}' moves controls rigidly; deform_scales and "
                "deform_opacity need control_motion 'field'"
            )
        if config.control_points > 0 and config.control_neighbors < 1:
            raise Snap3dError(
                f"control_neighbors must be at least 1, not {config.control_neighbors}"
            )
        super().__init__(config, scene)
        self.time_range = scene.time_range or (0.0, 1.0)
        self.deformation = DeformationField(
            config, scene.bounds_tensor, self.time_range, time_cells(config, scene.num_frames)
        )
        # The cameras `export` films from by default (the test split's), so that a run
        # exports from its checkpoint alone.
        self.register_buffer("export_camtoworlds", torch.zeros(0, 4, 4))
        self.register_buffer("export_Ks", torch.zeros(0, 3, 3))
        # sparse control (config.control_points > 0): sampled when the warm-up ends.
        self.register_buffer("control_means", torch.zeros(0, 3))
        self.register_buffer("control_radii", torch.zeros(0))
        # rigid parts (config.rigid_parts > 0): set when the trainer's steps end; while
        # empty, the field moves the splats.
        self.register_buffer("part_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("part_centers", torch.zeros(0, 3))
        self.register_buffer("part_quats", torch.zeros(0, 0, 4))
        self.register_buffer("part_shifts", torch.zeros(0, 0, 3))
        # with part_shading: the splats' canonical normals and the light (empty: none)
        self.register_buffer("part_normals", torch.zeros(0, 3))
        self.register_buffer("part_light", torch.zeros(0, 3))

    # -- construction -----------------------------------------------------------------

    def initialize(self, dataset: SceneDataset) -> None:
        super().initialize(dataset)
        times = dataset.times if dataset.times is not None else torch.zeros(1)
        self.deformation.set_frames(torch.unique(times.float()))
        if self._deform_start() == 0:  # no warm-up: the initial splats are all there is
            if self.config.fit_field_bounds:
                self._fit_field_bounds()
            self._sample_controls()
        from snap3d.data import load

        try:
            cameras = load(dataset.root, "test", dataset.downscale).cameras
        except Snap3dError:  # no test split: film from the training cameras
            cameras = dataset.cameras
        cameras = cameras.resized(self.scene.width, self.scene.height)
        self.export_camtoworlds = cameras.camtoworlds.float().clone()
        self.export_Ks = cameras.Ks.float().clone()

    def load_checkpoint_state(self, state: dict[str, Tensor]) -> None:
        for name in ("deformation.frame_times", "export_camtoworlds", "export_Ks"):
            if name not in state:
                raise Snap3dError(f"checkpoint lacks {name}")
        self.deformation.set_frames(state["deformation.frame_times"])
        # runs saved before control points (or their per-frame motions) existed have none
        # (and never used them)
        field = self.deformation
        state = {
            "control_means": torch.zeros(0, 3),
            "control_radii": torch.zeros(0),
            "deformation.control_shifts": torch.zeros_like(field.control_shifts),
            "deformation.control_turns": torch.zeros_like(field.control_turns),
            "deformation.basis_logits": torch.zeros_like(field.basis_logits),
            "deformation.basis_pivots": torch.zeros_like(field.basis_pivots),
            "part_labels": torch.zeros(0, dtype=torch.long),
            "part_centers": torch.zeros(0, 3),
            "part_quats": torch.zeros(0, 0, 4),
            "part_shifts": torch.zeros(0, 0, 3),
            "part_normals": torch.zeros(0, 3),
            "part_light": torch.zeros(0, 3),
        } | state
        names = ("export_camtoworlds", "export_Ks", "control_means", "control_radii")
        names += ("part_labels", "part_centers", "part_quats", "part_shifts")
        names += ("part_normals", "part_light")
        for name in names:
            setattr(self, name, torch.zeros_like(state[name]))  # sized by the run
        super().load_checkpoint_state(state)

    # -- rendering --------------------------------------------------------------------

    def _schedule(self) -> dict[str, int]:
        schedule = super()._schedule()
        schedule["refine_stop"] = max(1, int(self.config.refine_stop_fraction * self.max_steps))
        return schedule

    def _deform_start(self) -> int:
        return int(self.config.static_fraction * self.max_steps)

    def _window_end(self) -> int:
        """The step from which the time curriculum's window holds every frame."""
        return int((self.config.static_fraction + self.config.window_fraction) * self.max_steps)

    def deforms_at(self, step: int | None) -> bool:
        """Whether the field is on: after the static warm-up, and always outside training."""
        return step is None or step >= self._deform_start()

    def time_limit(self, step: int) -> float:
        """The latest time the training frames of ``step`` may have (time curriculum)."""
        cfg = self.config
        start = cfg.static_fraction * self.max_steps
        grown = (step - start) / max(cfg.window_fraction * self.max_steps, 1.0)
        window = cfg.time_window + (1 - cfg.time_window) * min(max(grown, 0.0), 1.0)
        t0, t1 = self.time_range
        return t0 + window * (t1 - t0)

    def train_batch(self, dataset: SceneDataset, step: int, generator: torch.Generator) -> dict:
        """One random training image among those the time curriculum allows at ``step``."""
        if dataset.times is None or self.config.time_window >= 1:
            return super().train_batch(dataset, step, generator)
        # the window always holds the first frames: time_range starts at the first one.
        limit = self.time_limit(step)
        allowed = torch.nonzero(dataset.times <= limit + 1e-6)[:, 0]
        cfg = self.config
        if cfg.window_focus > 0 and self._deform_start() <= step < self._window_end():
            if float(torch.rand((), generator=generator)) < cfg.window_focus:
                t0, t1 = self.time_range
                times = dataset.times[allowed]
                # at least the latest frame, when frames are sparser than time_window
                start = min(limit - cfg.time_window * (t1 - t0), float(times.max()))
                allowed = allowed[times >= start - 1e-6]
        i = int(allowed[torch.randint(len(allowed), (1,), generator=generator)])
        return image_batch(dataset, [i])

    @property
    def has_parts(self) -> bool:
        """Whether rigid parts (``rigid_parts``) move the splats instead of the field."""
        return self.part_labels.numel() > 0

    def gaussians_at(
        self, time: Tensor | float, viewpoint: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The Gaussians at ``time``, raw like ``splats``: means [N,3], quats [N,4],
        scales [N,3] (log), opacities [N] (logit), sh0 [N,1,3], shN [N,K,3]. With shaded
        rigid parts (``part_shading``) their colours are lit as seen from ``viewpoint``
        [3] (a camera centre; None: each splat's side facing out of its part)."""
        return self.deform(time, viewpoint=viewpoint)[0]

    def deform(
        self,
        time: Tensor | float,
        motion_samples: bool = False,
        span_time: float | None = None,
        latest: float | None = None,
        viewpoint: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], tuple[Tensor, Tensor] | None]:
        """The Gaussians at ``time`` (see ``gaussians_at``) and, with ``motion_samples``,
        trajectories of random Gaussians for the motion regularisers.

        The samples are ``motion_samples`` Gaussians (anchors) and their nearest canonical
        neighbours at (time - dt, time, time + dt), dt the frame spacing, and at
        ``span_time`` when given; they share the field evaluation with the render (one
        HexPlane pass per step). When time + dt lies past ``latest`` (the latest time
        trained: a time curriculum's window, or the last frame), they are at (time - 2 dt,
        time - dt, time) instead: past it the motion is a copy of the latest (or clamped),
        and a second difference across it holds the newest frame's motion back to none.

        Returns:
            (gaussians, None or (xyz [3 or 4,P,3], neighbours [A,K] into P of the first A
            points, P = A (K + 1), the anchors' raw quaternions [3 or 4,A,4])).
        """
        p = dict(self.splats.items())
        if self.has_parts:  # rigid parts replace the field
            quats, shifts = parts_at(
                self.deformation.frame_times, self.part_quats, self.part_shifts, float(time)
            )
            moved = move_parts(p, self.part_labels, self.part_centers, quats, shifts)
            if self.part_light.numel() > 0:
                moved = shade_parts(
                    moved,
                    self.part_normals,
                    self.part_labels,
                    quats,
                    self.part_light,
                    viewpoint,
                    self.part_centers,
                    shifts,
                )
            return moved, None
        means = p["means"]
        n = means.shape[0]
        time = torch.as_tensor(time, dtype=torch.float32, device=means.device).reshape(1)
        source, times = torch.arange(n, device=means.device), time.expand(n)
        backward = False
        if motion_samples:
            index, neighbors = self._sample_neighborhoods()
            frames = max(len(self.deformation.frame_times), 2)
            dt = (self.time_range[1] - self.time_range[0]) / (frames - 1)
            m = len(index)
            now = float(time)
            backward = latest is not None and now + dt > latest + 1e-6
            backward &= now - 2 * dt >= self.time_range[0] - 1e-6
            extra = [time - 2 * dt, time - dt] if backward else [time - dt, time + dt]
            if span_time is not None:
                extra.append(torch.full_like(time, span_time))
            source = torch.cat([source, index.repeat(len(extra))])
            times = torch.cat([times, *(t.expand(m) for t in extra)])
        offsets = self._offsets(source, times)
        for name, offset in offsets.items():
            p[name] = p[name] + offset[:n]
        if not motion_samples:
            return p, None
        moved = (means[source[n:]] + offsets["means"][n:]).reshape(-1, m, 3)
        at = 2 if backward else 1  # where the time itself goes among the sampled times
        xyz = torch.stack([*moved[:at], p["means"][index], *moved[at:]])
        anchors = index[: neighbors.shape[0]]  # their rotations at the same times
        turned = (
            self.splats["quats"][anchors]
            + offsets["quats"][n:].reshape(-1, m, 4)[:, : len(anchors)]
        )
        quats = torch.stack([*turned[:at], p["quats"][anchors], *turned[at:]])
        return p, (xyz, neighbors, quats)

    def _offsets(self, source: Tensor, times: Tensor) -> dict[str, Tensor]:
        """Offsets (as ``DeformationField``'s) of the canonical Gaussians ``source`` [N]
        (indices, repeats allowed) at ``times`` [N]: from the field at each Gaussian, or
        with control points, blended from the controls' rigid motions."""
        means = self.splats["means"]
        if self.config.control_points <= 0:
            return self.deformation(means[source], times)
        return self._skin(means, self.splats["quats"], source, times)

    def _control_offsets(self, times: Tensor) -> dict[str, Tensor]:
        """The controls' rigid motions at times [U], as offsets [U*K,...] (control-major
        within each time): from the field at the controls or from the per-frame table."""
        controls = self.control_means
        K = controls.shape[0]
        if self.config.control_motion != "field":
            shifts, turns = self.deformation.control_motion(times, controls)
            return {"means": shifts, "quats": turns}
        return self.deformation(controls.repeat(len(times), 1), times.repeat_interleave(K))

    def _skin(self, points: Tensor, quats: Tensor, source: Tensor, times: Tensor):
        """Offsets of ``points`` [P,3] with rotations ``quats`` [P,4], gathered by
        ``source`` [N] at ``times`` [N]: the blend of their nearest controls' motions."""
        controls = self.control_means
        K = controls.shape[0]
        quats = quats[source]
        if K == 0:  # before the warm-up ends there are no controls: no motion
            return {"means": torch.zeros_like(quats[:, :3]), "quats": torch.zeros_like(quats)}
        distinct, which = torch.unique(times, return_inverse=True)
        out = self._control_offsets(distinct)
        shifts = out["means"]  # [U*K,3]
        turns = out["quats"] + quats.new_tensor([1.0, 0.0, 0.0, 0.0])
        turns = turns / turns.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        idx, weights = self._skinning(points)  # once per point, however often sampled
        idx, weights, means = idx[source], weights[source], points[source]  # [N,k], [N,3]
        rows = which[:, None] * K + idx  # each Gaussian's controls at its time
        rot = quat_to_rotmat(turns)[rows]  # [N,k,3,3]
        centre = controls[idx]
        local = (rot @ (means[:, None] - centre)[..., None])[..., 0]
        moved = (weights[..., None] * (local + centre + shifts[rows])).sum(1)
        q = turns[rows]  # [N,k,4], in the hemisphere of the nearest control's
        blend = blend_quats(q, weights, q[:, :1])
        offsets = {"means": moved - means, "quats": quat_multiply(blend, quats) - quats}
        for name in ("scales", "opacities"):  # optional: blended like the motions
            if name in out:
                near = out[name][rows]  # [N,k,3] or [N,k]
                offsets[name] = ((weights if near.ndim == 2 else weights[..., None]) * near).sum(1)
        return offsets

    def _skinning(self, means: Tensor) -> tuple[Tensor, Tensor]:
        """[N,k] indices of the nearest control points and their blend weights."""
        controls = self.control_means
        with torch.no_grad():
            idx = nearest_neighbors(controls, self.config.control_neighbors, queries=means)
        d2 = ((means[:, None] - controls[idx]) ** 2).sum(-1)
        r2 = self.control_radii[idx] ** 2
        return idx, torch.softmax(-d2 / (2 * r2), dim=-1)

    @torch.no_grad()
    def _sample_controls(self) -> None:
        """Control points: the farthest-point sample of the solid canonical splats, each
        with a radius: its mean distance to the nearest other control points."""
        K = self.config.control_points
        if K <= 0:
            return
        picked = farthest_points(self._solid_means(K), K)
        field = self.deformation
        if field.basis_pivots.shape[0] > 0:
            self._assign_bases(picked)
        elif field.table_controls and len(self.control_means) and len(field.frame_times):
            # the new controls take the motions the old ones give their positions
            P = len(picked)
            field.control_shifts[:, :P], field.control_turns[:, :P] = self._motion_at(picked)
        self.control_means = picked.clone()
        k = min(self.config.control_neighbors, len(picked) - 1)
        if k < 1:
            self.control_radii = picked.new_full((len(picked),), self.scene.camera_extent)
            return
        near = nearest_neighbors(picked, k)
        self.control_radii = (picked[:, None] - picked[near]).norm(dim=-1).mean(1).clamp_min(1e-6)

    def _motion_at(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """The rigid motion that the current controls give ``points`` [P,3] at every
        frame: shifts [F,P,3] and quaternion offsets [F,P,4] (a table's rows)."""
        field = self.deformation
        F, P = len(field.frame_times), len(points)
        source = torch.arange(P, device=points.device).repeat(F)
        identity = points.new_tensor([1.0, 0.0, 0.0, 0.0]).expand(P, 4)
        moved = self._skin(points, identity, source, field.frame_times.repeat_interleave(P))
        return moved["means"].reshape(F, P, 3), moved["quats"].reshape(F, P, 4)

    @torch.no_grad()
    def _assign_bases(self, picked: Tensor) -> None:
        """Motion bases for new controls ``picked`` [P,3], placed afresh with them: the
        pivots are k-means centres of the dense solid splats (the warm-up's first splats
        are a rough cloud; the clusters follow the densified ones), each basis takes the
        motion that the old controls give its pivot (a rigid motion survives exactly),
        and each control weighs the bases by its distances to their pivots."""
        field = self.deformation
        B, P = field.basis_pivots.shape[0], len(picked)
        pivots = kmeans(self._dense_means(B), B)
        pivots = torch.cat([pivots, pivots[-1:].expand(B - len(pivots), 3)])  # if fewer
        if len(self.control_means) and len(field.frame_times):
            field.control_shifts[:], field.control_turns[:] = self._motion_at(pivots)
        field.basis_pivots = pivots
        d2 = ((picked[:, None] - pivots) ** 2).sum(-1)  # [P,B]
        sigma = picked.new_tensor(self.scene.camera_extent)
        if B > 1:
            spacing = torch.cdist(pivots, pivots) + torch.eye(B, device=pivots.device) * 1e9
            sigma = self.config.basis_spread * spacing.min(1).values.mean().clamp_min(1e-6)
        field.basis_logits[:P] = -d2 / (2 * sigma**2)

    def _dense_means(self, at_least: int, sample: int = 8192) -> Tensor:
        """Solid canonical means (up to ``sample`` of them) without the isolated ones:
        those whose mean distance to their 4 nearest is over twice the median's."""
        points = self._solid_means(at_least)
        if len(points) > sample:
            g = torch.Generator().manual_seed(0)
            points = points[torch.randperm(len(points), generator=g)[:sample].to(points.device)]
        k = min(4, len(points) - 1)
        if k < 1:
            return points
        gaps = (points[:, None] - points[nearest_neighbors(points, k)]).norm(dim=-1).mean(1)
        dense = gaps <= 2 * gaps.median()
        return points[dense] if int(dense.sum()) >= at_least else points

    def _sample_neighborhoods(self) -> tuple[Tensor, Tensor]:
        """Random anchor Gaussians and their canonical nearest neighbours.

        Returns:
            index [P] of Gaussians (A anchors then their neighbours) and neighbours [A,K]
            into P.
        """
        means = self.splats["means"].detach()
        n = means.shape[0]
        k = min(self.config.rigidity_neighbors, n - 1)
        anchors = torch.randint(n, (min(self.config.motion_samples, n),), device=means.device)
        near = nearest_neighbors(means, k + 1, queries=means[anchors])[:, 1:]
        a = len(anchors)
        neighbors = a + torch.arange(a * k, device=means.device).reshape(a, k)
        return torch.cat([anchors, near.reshape(-1)]), neighbors

    def camera_times(self, cameras: Cameras) -> Tensor:
        """[N] the cameras' times; the scene's first time when they carry none."""
        if cameras.times is not None:
            return cameras.times.float()
        return torch.full((len(cameras),), self.time_range[0], device=cameras.device)

    def rasterize(
        self,
        gaussians: dict[str, Tensor],
        cameras: Cameras,
        colors: Tensor | None = None,
        sh_degree: int | None = None,
        background: Tensor | None = None,
        render_mode: str = "RGB+ED",
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Rasterize ``gaussians`` (as from ``gaussians_at``) into ``cameras``.

        Args:
            colors: [N,D] features to composite instead of the SH colours.
            sh_degree: SH degree of the colours (ignored with ``colors``).
            background: [3] or [C,D] behind the Gaussians; default the scene's colour
                (zero for ``colors``).

        Returns:
            rasterize_gaussians' (render_colors [C,H,W,D'], render_alphas [C,H,W,1], meta).
        """
        if cameras.camera_model != "PINHOLE" and cameras.distortion is not None:
            raise Snap3dError(
                "the splat rasterizer renders pinhole cameras; undistort the images first "
                f"(got {cameras.camera_model} with distortion)"
            )
        g = gaussians
        C = len(cameras)
        if colors is None:
            colors = torch.cat([g["sh0"], g["shN"]], 1)
            bg = self.background if background is None else background
        else:
            sh_degree = None
            bg = colors.new_zeros(colors.shape[-1]) if background is None else background
        return rasterize_gaussians(
            g["means"],
            g["quats"],
            torch.exp(g["scales"]),
            torch.sigmoid(g["opacities"]),
            colors,
            cameras.viewmats,
            cameras.Ks,
            cameras.width,
            cameras.height,
            sh_degree=sh_degree,
            backgrounds=bg.to(g["means"]).expand(C, -1) if bg.ndim == 1 else bg,
            render_mode=render_mode,
            rasterize_mode=self.config.rasterize_mode,
            eps2d=self.config.eps2d,
            absgrad=self.config.absgrad and self.training,
            backend=self.config.backend,
        )

    def render(
        self,
        cameras: Cameras,
        step: int | None = None,
        background: Tensor | None = None,
        render_mode: str = "RGB+ED",
        **kwargs: Any,
    ) -> RenderOutput:
        """Render ``cameras`` ([N,H,W,3] images), each at its time ``cameras.times``.

        Cameras at one time share one rasterization (whose meta is in ``extras``, as the
        densification needs); cameras at different times are rendered one by one, and so
        are shaded rigid parts' (each camera sees its own side of the splats).
        """
        times = self.camera_times(cameras)
        shaded = self.has_parts and self.part_light.numel() > 0  # lit as each camera sees
        if len(cameras) > 1 and (shaded or bool((times != times[0]).any())):
            outs = [
                self.render(cameras[i], step, background, render_mode) for i in range(len(cameras))
            ]
            depths = [o.depth for o in outs]
            return RenderOutput(
                rgb=torch.cat([o.rgb for o in outs]),
                alpha=torch.cat([o.alpha for o in outs]),
                depth=None if depths[0] is None else torch.cat(depths),
            )
        cfg = self.config
        extras: dict[str, Any] = {}
        if self.deforms_at(step):
            # training renders carry the samples the motion regularisers need.
            sample = self.training and step is not None
            sample &= (
                cfg.rigidity_weight > 0
                or cfg.rotation_rigidity_weight > 0
                or cfg.motion_smoothness_weight > 0
            )
            latest = self.time_limit(step) if sample else None
            span = None
            if sample and cfg.rigidity_span:
                # a random time of the window trained so far (uniform over it)
                t0 = self.time_range[0]
                span = t0 + float(torch.rand(())) * (latest - t0)
            gaussians, trajectories = self.deform(
                times[0],
                motion_samples=sample,
                span_time=span,
                latest=latest,
                viewpoint=cameras.centers[0] if shaded else None,
            )
            if self.training and not self.has_parts:  # the offset penalty's input
                extras["position_offsets"] = gaussians["means"] - self.splats["means"]
            if trajectories is not None:
                extras["trajectories"] = trajectories
        else:
            gaussians = dict(self.splats.items())  # static warm-up
        colors, alphas, meta = self.rasterize(
            gaussians,
            cameras,
            sh_degree=self.sh_degree_at(step),
            background=background,
            render_mode=render_mode,
        )
        meta.update(extras)
        depth = colors[..., 3:4] if colors.shape[-1] == 4 else None
        return RenderOutput(rgb=colors[..., :3], alpha=alphas, depth=depth, extras=meta)

    # -- training ---------------------------------------------------------------------

    def loss(self, batch: dict[str, Any], output: RenderOutput) -> dict[str, Tensor]:
        losses = super().loss(batch, output)
        if not self.deforms_at(batch.get("step")):
            return losses
        cfg = self.config
        if cfg.control_motion != "field":
            latest = self.time_limit(batch["step"]) if cfg.time_window < 1 else None
            losses.update(self._control_regularisers(latest))
        else:  # the planes move things: keep them smooth
            weights = {
                "plane_tv": cfg.plane_tv_weight,
                "time_smoothness": cfg.time_smoothness_weight,
                "time_l1": cfg.time_l1_weight,
            }
            for name, value in self.deformation.regularisers().items():
                if weights[name] > 0:
                    losses[name] = weights[name] * value
        offsets = output.extras.get("position_offsets")
        if cfg.offset_weight > 0 and offsets is not None:
            losses["offset"] = cfg.offset_weight * offsets.abs().mean() / self.scene.camera_extent
        if "trajectories" in output.extras:
            xyz, neighbors, quats = output.extras["trajectories"]
            if cfg.rigidity_weight > 0:
                # distances at the later sampled times (and the span time) against the first
                losses["rigidity"] = cfg.rigidity_weight * rigidity_loss(xyz, neighbors)
            if cfg.rotation_rigidity_weight > 0:
                arap = rotation_rigidity_loss(xyz, quat_to_rotmat(quats), neighbors)
                losses["rotation_rigidity"] = cfg.rotation_rigidity_weight * arap
            if cfg.motion_smoothness_weight > 0:
                smooth = smoothness_loss(xyz[:3])
                losses["motion_smoothness"] = cfg.motion_smoothness_weight * smooth
        return losses

    def _control_regularisers(self, latest: float | None) -> dict[str, Tensor]:
        """Weighted regularisers of the per-frame control motions over the frames up to
        ``latest`` (all when None): the later ones are copies while a curriculum widens."""
        cfg = self.config
        field = self.deformation
        K = len(self.control_means)
        if K < 2:
            return {}
        frames = len(field.frame_times)
        if latest is not None:
            frames = max(1, field.frames_until(latest))
        motion = self._control_offsets(field.frame_times[:frames])
        positions = self.control_means + motion["means"].reshape(frames, K, 3)
        turns = motion["quats"].reshape(frames, K, 4)
        xyz = torch.cat([self.control_means[None], positions])  # the canonical first
        near = nearest_neighbors(self.control_means, cfg.control_neighbors)
        out = {}
        if cfg.control_rigidity_weight > 0:
            out["control_rigidity"] = cfg.control_rigidity_weight * rigidity_loss(xyz, near)
        if cfg.control_arap_weight > 0:
            turns = turns + positions.new_tensor([1.0, 0, 0, 0])
            identity = torch.eye(3, device=positions.device).expand(1, K, 3, 3)
            rotations = torch.cat(
                [identity, quat_to_rotmat(turns / turns.norm(dim=-1, keepdim=True))]
            )
            arap = rotation_rigidity_loss(xyz, rotations, near)
            out["control_arap"] = cfg.control_arap_weight * arap
        if cfg.control_smoothness_weight > 0 and frames >= 3:
            # the table's own rows: the controls, or the motion bases
            rows = K if cfg.control_motion == "frames" else field.table_controls
            path = torch.cat(
                [field.control_shifts[:frames, :rows], field.control_turns[:frames, :rows]], -1
            )
            out["control_smoothness"] = cfg.control_smoothness_weight * smoothness_loss(path)
        return out

    def after_step(self, step: int, output: RenderOutput, optimizers: dict) -> None:
        super().after_step(step, output, optimizers)
        cfg = self.config
        if step + 1 == self._deform_start():
            if cfg.fit_field_bounds:
                # the planes span the canonical splats the warm-up made, not a generic box
                self._fit_field_bounds()
            self._sample_controls()
        elif cfg.control_resample and step + 1 > self._deform_start():
            sched = self._schedule()
            refining = sched["refine_start"] < step + 1 <= sched["refine_stop"]
            if refining and (step + 1) % cfg.refine_every == 0:
                self._sample_controls()
                per_control = ("control_shifts", "control_turns")
                if cfg.control_motion == "bases":  # new bases and weights
                    per_control += ("basis_logits",)
                for name in per_control:  # moments of old controls
                    if name in optimizers:
                        optimizers[name].state.clear()
        growing = step + 1 <= self._window_end()
        if cfg.hold_time and cfg.time_window < 1 and growing:
            latest = self.time_limit(step + 1)
            self.deformation.hold_after(latest, extrapolate=cfg.hold_extrapolate)

    def finish_training(self, dataset: SceneDataset, progress: bool = True) -> None:
        """With ``rigid_parts``: segment the field's trajectories into parts and refit the
        motion as per-frame rigid part motions (``rigid_parts.track_and_map``). The
        splats become the Gaussians at the first frame; the model changes only at the
        end, so an interrupted stage leaves it as the field left it."""
        cfg = self.config
        if cfg.rigid_parts <= 0 or self.has_parts:
            return
        frames = self.deformation.frame_times
        if dataset.times is None or len(frames) < 2:
            raise Snap3dError("rigid_parts needs a video: training views at several times")
        device = self.background.device
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            start = {k: v.detach() for k, v in self.gaussians_at(frames[0]).items()}
            paths = torch.stack([self.gaussians_at(t)["means"] for t in frames], 1)
            solid = torch.sigmoid(start["opacities"]) > 0.1
            # the scene's size: half the diagonal of the solid splats' robust box (the
            # scene box of a D-NeRF capture is a generic one, often far larger)
            means = start["means"][solid] if int(solid.sum()) >= 2 else start["means"]
            box = torch.quantile(means.cpu(), torch.tensor([0.01, 0.99]), dim=0)
            radius = float((box[1] - box[0]).norm()) / 2
            labels = segment_parts(
                paths,
                solid,
                cfg.rigid_parts,
                cfg.part_static_motion * radius,
                cfg.part_rigidity_scale * radius,
                generator=generator,
            )
            labels = reassign_parts(paths, solid, labels, cfg.part_reassign)
            P = cfg.rigid_parts + 1
            centers = torch.zeros(P, 3, device=device)
            for k in range(P):
                members = (labels == k) & solid
                if members.any():
                    centers[k] = start["means"][members].mean(0)
        times = dataset.times.float()
        views = [torch.nonzero((times - t).abs() < 1e-6)[:, 0] for t in frames.cpu()]
        if any(len(v) == 0 for v in views):
            raise Snap3dError("rigid_parts: a frame time has no training view", dataset.root)

        def render_loss(gaussians: dict[str, Tensor], index: int) -> Tensor:
            camera = dataset.cameras[[index]].to(device)
            image = dataset.image(index).to(device)
            out, _, _ = self.rasterize(
                gaussians, camera, sh_degree=cfg.sh_degree, render_mode="RGB"
            )
            return (out[0, ..., :3] - image).abs().mean()

        # rates tuned on the bundled scene (radius 1.125); lengths scale with the radius
        unit = radius / 1.125
        rates = {
            "turn": 0.02,
            "shift": 0.006 * unit,
            "refine_turn": 0.002,
            "refine_shift": 0.0006 * unit,
            "means": 1e-3 * unit,
            "scales": 5e-3,
            "quats": 1e-3,
            "opacities": 0.05,
            "sh0": 0.03,
            "shN": 0.03 / 20,
            "normals": 0.01,
            "light": 0.01,
        }
        total = total_steps(
            len(frames), cfg.part_track_steps, cfg.part_map_steps, cfg.part_refine_steps
        )
        from rich.progress import Progress

        with Progress(disable=not progress) as bar:
            task = bar.add_task("rigid parts", total=total)
            fit = track_and_map(
                start,
                labels,
                centers,
                views,
                render_loss,
                rates,
                cfg.part_track_steps,
                cfg.part_map_steps,
                cfg.part_refine_steps,
                generator,
                progress=lambda done: bar.update(task, completed=done),
                frame_times=frames,
                turn_prior=cfg.part_turn_prior,
                smoothness=cfg.part_smoothness,
                length_unit=unit,
                refine_decay=cfg.part_refine_decay,
                shading=cfg.part_shading,
                viewpoints=dataset.cameras.centers.to(device),
            )
        for name, value in fit.gaussians.items():
            self.splats[name] = nn.Parameter(value.contiguous())
        self.part_labels = labels
        self.part_centers = centers
        self.part_quats = fit.quats
        self.part_shifts = fit.shifts
        if fit.light is not None:
            self.part_normals = fit.normals
            self.part_light = fit.light

    def _fit_field_bounds(self) -> None:
        """Span the HexPlane over the canonical splats that are not (nearly) transparent."""
        self.deformation.grid.fit_bounds(self._solid_means(100))

    def _solid_means(self, at_least: int) -> Tensor:
        """Canonical means of the splats that are not (nearly) transparent; all of them
        when fewer than ``at_least`` are."""
        means = self.splats["means"].detach()
        solid = torch.sigmoid(self.splats["opacities"].detach()) > 0.1
        return means[solid] if int(solid.sum()) >= at_least else means

    def param_groups(self) -> dict[str, ParamGroup]:
        cfg = self.config
        groups = super().param_groups()
        field = self.deformation
        if cfg.control_motion == "bases":
            groups["basis_logits"] = ParamGroup(
                [field.basis_logits], cfg.basis_weight_lr, lr_final=cfg.basis_weight_lr * 0.1
            )
        if cfg.control_motion != "field":  # the table moves the controls; no planes
            shift_lr = cfg.control_shift_lr * self.scene.camera_extent
            groups["control_shifts"] = ParamGroup(
                [field.control_shifts], shift_lr, lr_final=shift_lr * 0.1
            )
            groups["control_turns"] = ParamGroup(
                [field.control_turns], cfg.control_turn_lr, lr_final=cfg.control_turn_lr * 0.1
            )
            return groups
        lr = cfg.deform_lr * self.scene.camera_extent
        groups["deformation_grid"] = ParamGroup(
            list(field.grid.parameters()), cfg.grid_lr, lr_final=cfg.grid_lr * 0.1
        )
        groups["deformation_mlp"] = ParamGroup(
            list(field.trunk.parameters()) + list(field.heads["means"].parameters()),
            lr,
            lr_final=lr * 0.1,
        )
        # rotations, log-scales and logits are unitless: no world-scale factor.
        others = [
            p for name, head in field.heads.items() if name != "means" for p in head.parameters()
        ]
        groups["deformation_heads"] = ParamGroup(
            others, cfg.deform_lr, lr_final=cfg.deform_lr * 0.1
        )
        if field.frame_codes.numel() > 0:
            groups["frame_codes"] = ParamGroup([field.frame_codes], cfg.frame_code_lr)
        return groups

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "time_range": list(self.time_range),
            "frames": len(self.deformation.frame_times),
            "time_cells": time_cells(self.config, self.scene.num_frames),
            "deformation_parameters": sum(
                p.numel() for p in self.deformation.parameters() if p.requires_grad
            ),
        }

    # -- point trajectories -------------------------------------------------------------

    def export_cameras(self) -> Cameras:
        """The cameras ``export`` films from by default (the test split's)."""
        return Cameras(self.export_camtoworlds, self.export_Ks, self.scene.width, self.scene.height)

    @torch.no_grad()
    def trajectory_video(self, cameras: Cameras, times: Tensor) -> PointTrajectoryVideo:
        """Film ``cameras`` (one, or one per time) at ``times`` [T] and carry the surface
        points of the first frame's pixels through time.

        Returns:
            the PointTrajectoryVideo; pixels whose first-frame opacity is under 0.5 see no
            surface and get no trajectory.
        """
        T = len(times)
        if len(cameras) == 1:
            cameras = cameras[[0] * T]
        if len(cameras) != T:
            raise Snap3dError(f"{len(cameras)} cameras for {T} times: give one or one per time")
        device = self.background.device
        cameras = cameras.to(device)
        times = times.float().to(device)
        # (shaded rigid parts are lit as each frame's camera sees them)
        eyes = cameras.centers
        frames = [self.gaussians_at(t, eyes[k]) for k, t in enumerate(times)]
        if self.has_parts:
            # each pixel's point belongs to the part that most of its opacity comes
            # from, and moves rigidly with it (a blend would smear parts at their edges)
            features = nn.functional.one_hot(self.part_labels, len(self.part_centers))
            features = features.float()
        else:
            # [N, 3T]: every Gaussian's displacement from the first time to each time; one
            # pass with the first time's geometry composites them (and the expected depth).
            features = torch.cat([g["means"] - frames[0]["means"] for g in frames], dim=-1)
        carried, alpha0, _ = self.rasterize(
            frames[0], cameras[0], colors=features, render_mode="RGB+ED"
        )
        H, W = cameras.height, cameras.width
        tracked = alpha0[0, ..., 0] > 0.5
        # the surface point of each pixel at the first time: on the pixel's ray at the
        # median (or expected) depth (blending the Gaussians' centres instead would pull
        # it sideways towards the centres of the Gaussians around the ray).
        origins, dirs = cameras[0].rays(0)
        forward = cameras.camtoworlds[0, :3, 2]
        median = self.config.start_depth == "median"
        depth0 = self.median_depth(frames[0], cameras[0]) if median else carried[0, ..., -1]
        depth0 = depth0[..., None]
        start = origins + dirs * depth0 / (dirs @ forward)[..., None].clamp_min(1e-8)
        if self.has_parts:
            xyz = self._carry_by_parts(start, carried[0, ..., :-1].argmax(-1), times)
        else:
            moved = carried[0, ..., :-1] / alpha0[0].clamp_min(1e-10)
            xyz = start[:, :, None, :] + moved.reshape(H, W, T, 3)
        xyz = xyz.permute(2, 0, 1, 3) * tracked[None, :, :, None]
        rgbs, depths, alphas = [], [], []
        for k, g in enumerate(frames):
            out, alpha, _ = self.rasterize(g, cameras[k], sh_degree=self.config.sh_degree)
            rgbs.append(out[0, ..., :3])
            depths.append(out[0, ..., 3])
            alphas.append(alpha[0, ..., 0])
            if median:  # the surface the points start on (the first frame's is depth0)
                depths[-1] = depth0[..., 0] if k == 0 else self.median_depth(g, cameras[k])
        depth, alpha = torch.stack(depths), torch.stack(alphas)
        visible = point_visibility(
            xyz, cameras, depth, alpha, tracked, self.config.visibility_tolerance
        )
        rgb = (torch.stack(rgbs).clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        return PointTrajectoryVideo(
            rgb=rgb.cpu(),
            xyz=xyz.float().cpu(),
            visible=visible.cpu(),
            times=times.cpu(),
            camtoworlds=cameras.camtoworlds.float().cpu(),
            Ks=cameras.Ks.float().cpu(),
        )

    def _carry_by_parts(self, start: Tensor, part: Tensor, times: Tensor) -> Tensor:
        """[H,W,T,3]: points ``start`` [H,W,3] at ``times[0]``, each carried through
        ``times`` [T] by the rigid motion of its part ``part`` [H,W]."""
        centers = self.part_centers
        quats, shift = parts_at(
            self.deformation.frame_times, self.part_quats, self.part_shifts, times
        )
        R = quat_to_rotmat(quats.reshape(-1, 4)).reshape(*quats.shape[:2], 3, 3)  # [T,P,3,3]
        c, R0, s0 = centers[part], R[0][part], shift[0][part]  # [H,W,...]
        # back to the canonical pose (R0 is a rotation: its inverse is its transpose)
        local = torch.einsum("hwji,hwj->hwi", R0, start - c - s0)
        xyz = torch.einsum("thwij,hwj->hwti", R[:, part], local)
        return xyz + c[:, :, None] + shift[:, part].permute(1, 2, 0, 3)

    def median_depth(
        self, gaussians: dict[str, Tensor], camera: Cameras, levels: int = 128
    ) -> Tensor:
        """[H,W] depth at which a pixel's accumulated opacity reaches half of its total.

        The rasterizer composites features, not order statistics, so each Gaussian gets
        ``levels`` features: soft steps that rise from 0 to 1 as a depth level passes its
        centre's depth (over one level spacing). Composited, feature k is the opacity
        accumulated in front of level k, and the crossing of half the total is
        interpolated between levels. The levels span the centre depths of the Gaussians
        in front of the camera whose centres project near the image (0.1% and 99.9%
        quantiles, so that a stray Gaussian does not coarsen them). A lone Gaussian's
        depth is found exactly; otherwise the error is within a level spacing. Pixels
        that reach half at the first level (or never) get the first (last) level.
        """
        pix, z = camera.project(gaussians["means"])
        pix, z = pix[0], z[0, :, 0]
        W, H = camera.width, camera.height
        near = (z > 1e-3) & (pix[:, 0] > -0.5 * W) & (pix[:, 0] < 1.5 * W)
        near &= (pix[:, 1] > -0.5 * H) & (pix[:, 1] < 1.5 * H)
        if not near.any():
            return z.new_zeros(H, W)
        span = torch.quantile(z[near], torch.tensor([0.001, 0.999]).to(z))
        pad = 1e-3 * span[1] + 1e-6
        depths = torch.linspace(0, 1, levels).to(z) * (span[1] - span[0] + 2 * pad) + span[0] - pad
        spacing = depths[1] - depths[0]
        steps = ((depths[None, :] - z[:, None]) / spacing + 0.5).clamp(0, 1)  # [N, K]
        front, alpha, _ = self.rasterize(gaussians, camera, colors=steps, render_mode="RGB")
        front, half = front[0], 0.5 * alpha[0]  # [H,W,K], [H,W,1]
        above = front >= half
        k = above.float().argmax(-1).clamp(1, levels - 1)  # the first level past half
        lo = front.gather(-1, (k - 1)[..., None])[..., 0]
        hi = front.gather(-1, k[..., None])[..., 0]
        frac = ((half[..., 0] - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        median = depths[k - 1] + frac * spacing
        median = torch.where(above[..., 0], depths[0], median)
        return torch.where(above.any(-1), median, depths[-1])

    def export(
        self,
        fmt: str,
        output: Path,
        camera: int = 0,
        camera_path: Path | None = None,
        times: tuple[float, ...] = (),
    ) -> Path:
        """Write ``output`` (.npz) and its preview ``output`` with suffix .mp4.

        Args:
            fmt: "trajectory-video".
            camera: index of the default (test) camera to film from.
            camera_path: a camera path file (see ``snap3d render``): one camera, or one
                per time; overrides ``camera``.
            times: scene times of the frames; default the training frames' times, or for
                a path of several cameras, as many times evenly over the scene's range.
        """
        if fmt != "trajectory-video":
            raise Snap3dError(
                f"splat4d runs export to ply, splat, spz or trajectory-video, not {fmt!r}"
            )
        if camera_path is not None:
            from snap3d.render.paths import load_camera_path

            cameras = load_camera_path(camera_path)
        else:
            available = self.export_cameras()
            if not 0 <= camera < len(available):
                raise Snap3dError(f"--camera {camera} is out of range: 0..{len(available) - 1}")
            cameras = available[[camera]]
        if times:
            sample = torch.tensor(times, dtype=torch.float32)
        elif len(cameras) > 1:
            sample = torch.linspace(*self.time_range, len(cameras))
        else:
            sample = self.deformation.frame_times.cpu()
        video = self.trajectory_video(cameras, sample)
        output = Path(output)
        video.save(output)
        video.write_preview(output.with_suffix(".mp4"))
        return output


def time_cells(config: Splat4DConfig, num_frames: int) -> int:
    """The planes' time cells: ``config.plane_time_resolution``, or when that is 0 one per
    ``frames_per_time_cell`` of ``num_frames`` training frames (at least 2; 25 when the
    frame count is unknown, as for runs saved before it was kept)."""
    if config.plane_time_resolution > 0:
        return config.plane_time_resolution
    if num_frames <= 0:
        return 25
    return max(2, round(num_frames / config.frames_per_time_cell))


def kmeans(points: Tensor, k: int, iterations: int = 50) -> Tensor:
    """[min(k,N),3] k-means centres of ``points`` [N,3], seeded by a farthest-point
    sample (deterministic); Lloyd's iterations until the clusters stop changing."""
    centres = farthest_points(points, k)
    last = None
    for _ in range(iterations):
        label = torch.cdist(points, centres).argmin(1)
        if last is not None and torch.equal(label, last):
            break
        last = label
        sums = torch.zeros_like(centres).index_add_(0, label, points)
        counts = torch.bincount(label, minlength=len(centres))[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


def farthest_points(points: Tensor, k: int) -> Tensor:
    """[min(k,N),3] a farthest-point sample of ``points`` [N,3], from the point nearest
    their centroid (deterministic)."""
    n = points.shape[0]
    k = min(k, n)
    chosen = torch.empty(k, dtype=torch.long, device=points.device)
    chosen[0] = ((points - points.mean(0)) ** 2).sum(-1).argmin()
    gap = ((points - points[chosen[0]]) ** 2).sum(-1)
    for i in range(1, k):
        chosen[i] = gap.argmax()
        gap = torch.minimum(gap, ((points - points[chosen[i]]) ** 2).sum(-1))
    return points[chosen]


register_method(
    "splat4d",
    Splat4DConfig,
    Splat4DModel,
    "4D Gaussian splats: canonical splats + HexPlane deformation (4DGaussians, 4Real)",
)
