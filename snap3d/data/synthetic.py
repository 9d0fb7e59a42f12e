"""Analytic scenes and an exact ray tracer: the ground truth behind the bundled assets.

The three tiny scenes of ``assets/`` are built here from spheres, boxes, rectangles and
capped cylinders with procedural textures, and rendered by exact ray-primitive
intersection in numpy. Nothing here is learned, so tests and benchmarks can regenerate
any view, depth or surface point and compare a trained model against the truth.

Conventions:

- World coordinates are metres, right-handed. ``object360_scene`` and ``dynamic_scene``
  are z-up (as Blender); ``forward_scene`` is y-up with the cameras looking down -z.
- Cameras are OpenCV: ``camtoworld [4,4]`` maps camera to world coordinates with x right,
  y down, z forward; ``K [3,3]`` is in pixels and the centre of pixel (row i, column j)
  is at ``(x, y) = (j + 0.5, i + 0.5)`` (as ``snap3d.cameras``).
- Ray directions are unit vectors; a ray's ``distance`` is measured along it.
- Every motion is rigid per primitive and ``time`` runs over [0, 1]; a primitive's
  ``motion(time) [4,4]`` is applied after its rest ``pose`` and is the identity at 0.
- Shading is Lambertian under one directional light plus ambient light, with no
  shadows, so colours do not depend on the viewpoint.
- Colours are linear floats in [0, 1], written to PNG as they are (no gamma).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray
Color = tuple[float, float, float]

# A ray counts a hit only beyond this distance, so one leaving a surface does not hit it again.
_MIN_DISTANCE = 1e-9

__all__ = [
    "Box",
    "Checker",
    "Cylinder",
    "Gradient",
    "Hit",
    "PerPart",
    "Primitive",
    "Quad",
    "Scene",
    "Solid",
    "Sphere",
    "Stripes",
    "dynamic_motion",
    "dynamic_scene",
    "forward_scene",
    "look_at",
    "object360_scene",
    "pixel_rays",
    "render",
    "rigid",
    "rotation",
    "surface_trajectories",
]


# ----------------------------------------------------------------------------- transforms


def rotation(axis: Sequence[float], angle: float) -> Array:
    """[3,3] rotation by ``angle`` radians about ``axis`` (right-hand rule)."""
    a = np.asarray(axis, dtype=np.float64)
    x, y, z = a / np.linalg.norm(a)
    c, s = math.cos(angle), math.sin(angle)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


def rigid(
    rot: Array | None = None,
    translation: Sequence[float] = (0.0, 0.0, 0.0),
    pivot: Sequence[float] = (0.0, 0.0, 0.0),
) -> Array:
    """[4,4] transform ``x -> rot (x - pivot) + pivot + translation``."""
    r = np.eye(3) if rot is None else np.asarray(rot, dtype=np.float64)
    pivot = np.asarray(pivot, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = pivot - r @ pivot + np.asarray(translation, dtype=np.float64)
    return m


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float]) -> Array:
    """[4,4] OpenCV camera-to-world of a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear upwards in the image; it must not be
    parallel to the viewing direction.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, forward, eye
    return m


# ----------------------------------------------------------------------------- textures
# A texture maps surface coordinates ``uv [N,2]`` in [0,1] and the index ``part [N]`` of
# the face they lie on (see each primitive) to albedo ``[N,3]``.


@dataclass(frozen=True)
class Solid:
    """One colour everywhere."""

    color: Color

    def __call__(self, uv: Array, part: Array) -> Array:
        return np.broadcast_to(np.asarray(self.color, dtype=np.float64), (len(uv), 3))


@dataclass(frozen=True)
class Checker:
    """A checkerboard of ``squares = (along u, along v)`` squares per part."""

    color_a: Color
    color_b: Color
    squares: tuple[int, int] = (8, 8)

    def __call__(self, uv: Array, part: Array) -> Array:
        cells = np.floor(uv * np.asarray(self.squares)).astype(np.int64)
        odd = (cells.sum(axis=-1) % 2).astype(bool)
        return np.where(odd[:, None], np.asarray(self.color_b), np.asarray(self.color_a))


@dataclass(frozen=True)
class Stripes:
    """``count`` bands across ``uv[axis]``, cycling through ``colors``."""

    colors: tuple[Color, ...]
    count: int
    axis: int = 0

    def __call__(self, uv: Array, part: Array) -> Array:
        band = np.minimum(np.floor(uv[:, self.axis] * self.count), self.count - 1)
        return np.asarray(self.colors, dtype=np.float64)[band.astype(np.int64) % len(self.colors)]


@dataclass(frozen=True)
class Gradient:
    """A linear blend from ``color_a`` at ``uv[axis] = 0`` to ``color_b`` at 1."""

    color_a: Color
    color_b: Color
    axis: int = 1

    def __call__(self, uv: Array, part: Array) -> Array:
        w = np.clip(uv[:, self.axis : self.axis + 1], 0.0, 1.0)
        return (1.0 - w) * np.asarray(self.color_a) + w * np.asarray(self.color_b)


@dataclass(frozen=True)
class PerPart:
    """A texture per part: ``textures[k]`` colours part k (box faces, cylinder side/caps)."""

    textures: tuple

    def __call__(self, uv: Array, part: Array) -> Array:
        out = np.zeros((len(uv), 3))
        for k, texture in enumerate(self.textures):
            sel = part == k
            if sel.any():
                out[sel] = texture(uv[sel], part[sel])
        return out


# ----------------------------------------------------------------------------- primitives


@dataclass(kw_only=True, eq=False)
class Primitive:
    """A surface in its own local frame, placed by ``pose`` and moved by ``motion``.

    Attributes:
        texture: maps ``(uv [N,2], part [N])`` to albedo ``[N,3]``.
        pose: [4,4] rigid local-to-world transform at rest (no scale).
        motion: ``time -> [4,4]`` rigid world transform applied after ``pose``, the
            identity at time 0; None for a static primitive.
    """

    texture: Callable[[Array, Array], Array]
    pose: Array = field(default_factory=lambda: np.eye(4))
    motion: Callable[[float], Array] | None = None

    def world_from_local(self, time: float = 0.0) -> Array:
        """[4,4] local-to-world transform at ``time``."""
        pose = np.asarray(self.pose, dtype=np.float64)
        return pose if self.motion is None else np.asarray(self.motion(time)) @ pose

    def intersect(
        self, origins: Array, dirs: Array, time: float = 0.0
    ) -> tuple[Array, Array, Array]:
        """First hit of rays with this primitive at ``time``.

        Args:
            origins: [...,3] ray origins, world frame.
            dirs: [...,3] unit ray directions, world frame.
            time: scene time in [0, 1].

        Returns:
            ``distance [...]`` along each ray (``inf`` where it misses), ``normals [...,3]``
            unit world normals (outward on solids; facing the ray on open surfaces) and
            ``albedo [...,3]`` (zero where it misses).
        """
        shape = np.shape(origins)[:-1]
        o = np.reshape(np.asarray(origins, dtype=np.float64), (-1, 3))
        d = np.reshape(np.asarray(dirs, dtype=np.float64), (-1, 3))
        rays, dist, n, a = self._first_hits(o, d, time)
        distance, normals, albedo = np.full(len(o), np.inf), np.zeros_like(o), np.zeros_like(o)
        distance[rays], normals[rays], albedo[rays] = dist, n, a
        return distance.reshape(shape), normals.reshape(*shape, 3), albedo.reshape(*shape, 3)

    def signed_distance(self, points: Array, time: float = 0.0) -> Array:
        """[...] signed distance of world ``points [...,3]`` to the surface at ``time``
        (negative inside solids)."""
        return self._sdf(self._to_local(points, time))

    def bounds(self, time: float = 0.0) -> Array:
        """[2,3] world axis-aligned box (min, max) that holds the primitive at ``time``."""
        h = np.asarray(self._half_extents(), dtype=np.float64)
        corners = np.stack(np.meshgrid(*[(-v, v) for v in h], indexing="ij"), -1).reshape(-1, 3)
        m = self.world_from_local(time)
        world = corners @ m[:3, :3].T + m[:3, 3]
        return np.stack([world.min(0), world.max(0)])

    def _to_local(self, points: Array, time: float) -> Array:
        m = self.world_from_local(time)
        return (np.asarray(points, dtype=np.float64) - m[:3, 3]) @ m[:3, :3]

    def _first_hits(self, o: Array, d: Array, time: float) -> tuple[Array, Array, Array, Array]:
        """Hits of world rays ``o, d [N,3]``: the indices ``[M]`` of the rays that hit and
        their ``distance [M]``, world ``normals [M,3]`` and ``albedo [M,3]``."""
        m = self.world_from_local(time)
        rot, o = m[:3, :3], o - m[:3, 3]
        # Only rays that meet the bounding sphere ahead of them can hit: most rays miss most
        # primitives, and this test is far cheaper than the exact one.
        b = np.einsum("ij,ij->i", o, d)
        c = np.einsum("ij,ij->i", o, o) - np.sum(np.square(self._half_extents()))
        rays = np.flatnonzero((b * b >= c) & ((b <= 0) | (c <= 0)))
        distance, normals, uv, part = self._hit(o[rays] @ rot, d[rays] @ rot)
        hit = np.isfinite(distance) & (distance > _MIN_DISTANCE)
        albedo = self.texture(uv[hit], part[hit])
        return rays[hit], distance[hit], normals[hit] @ rot.T, albedo

    # Subclass hooks, all in the local frame (the shape centred at its origin) on flat
    # [N,...] arrays.
    def _hit(self, o: Array, d: Array) -> tuple[Array, Array, Array, Array]:
        """(distance [N], NaN, inf or <= 0 on a miss; normals [N,3]; uv [N,2]; part [N])."""
        raise NotImplementedError

    def _sdf(self, p: Array) -> Array:
        raise NotImplementedError

    def _half_extents(self) -> Sequence[float]:
        raise NotImplementedError


def _nearest(candidates: Array) -> tuple[Array, Array]:
    """Smallest valid distance among ``candidates [N,K]`` (invalid: NaN or <= 0) and its index."""
    c = np.where(candidates > _MIN_DISTANCE, candidates, np.inf)
    k = np.argmin(c, axis=1)
    return np.take_along_axis(c, k[:, None], 1)[:, 0], k


def _angle01(x: Array, y: Array) -> Array:
    return 0.5 + np.arctan2(y, x) / (2.0 * math.pi)


@dataclass(kw_only=True, eq=False)
class Sphere(Primitive):
    """A sphere of ``radius`` centred at the local origin.

    uv: u the longitude about local z, v from the +z pole (0) to the -z pole (1); one part.
    """

    radius: float

    def _hit(self, o, d):
        b = np.einsum("ij,ij->i", o, d)
        c = np.einsum("ij,ij->i", o, o) - self.radius**2
        with np.errstate(invalid="ignore"):
            root = np.sqrt(b * b - c)
        distance, _ = _nearest(np.stack([-b - root, -b + root], 1))
        p = o + np.where(np.isfinite(distance), distance, 0.0)[:, None] * d
        n = p / self.radius
        uv = np.stack([_angle01(n[:, 0], n[:, 1]), np.arccos(np.clip(n[:, 2], -1, 1)) / math.pi], 1)
        return distance, n, uv, np.zeros(len(o), dtype=np.int64)

    def bounds(self, time: float = 0.0) -> Array:
        centre = self.world_from_local(time)[:3, 3]
        return np.stack([centre - self.radius, centre + self.radius])

    def _sdf(self, p):
        return np.linalg.norm(p, axis=-1) - self.radius

    def _half_extents(self):
        return (self.radius,) * 3


@dataclass(kw_only=True, eq=False)
class Box(Primitive):
    """A box with ``half_size = (hx, hy, hz)`` centred at the local origin.

    Parts 0..5 are the faces -x, +x, -y, +y, -z, +z. On each face uv are the two other
    local coordinates in increasing axis order ((y, z) on x faces, (x, z) on y faces,
    (x, y) on z faces), mapped from [-h, h] to [0, 1].
    """

    half_size: tuple[float, float, float]

    def _hit(self, o, d):
        h = np.asarray(self.half_size, dtype=np.float64)
        d_safe = np.where(d == 0.0, 1e-300, d)
        t_lo, t_hi = (-h - o) / d_safe, (h - o) / d_safe
        t_near, t_far = np.minimum(t_lo, t_hi), np.maximum(t_lo, t_hi)
        enter, leave = t_near.max(1), t_far.min(1)
        inside = enter <= _MIN_DISTANCE  # the ray starts inside: it hits the face it leaves by
        distance = np.where(enter <= leave, np.where(inside, leave, enter), np.nan)
        axis = np.where(inside, t_far.argmin(1), t_near.argmax(1))
        rows = np.arange(len(o))
        sign = np.sign(d[rows, axis]) * np.where(inside, 1.0, -1.0)
        n = np.zeros_like(o)
        n[rows, axis] = sign
        p = o + np.nan_to_num(distance)[:, None] * d
        others = np.array([[1, 2], [0, 2], [0, 1]])[axis]
        uv = (np.take_along_axis(p, others, 1) + h[others]) / (2.0 * h[others])
        return distance, n, uv, 2 * axis + (sign > 0)

    def _sdf(self, p):
        q = np.abs(p) - np.asarray(self.half_size)
        return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(-1), 0.0)

    def _half_extents(self):
        return self.half_size


@dataclass(kw_only=True, eq=False)
class Quad(Primitive):
    """A two-sided rectangle in the local z = 0 plane with ``half_size = (hx, hy)``.

    uv: (x, y) mapped from [-h, h] to [0, 1]; one part. Normals face the incoming ray.
    """

    half_size: tuple[float, float]

    def _hit(self, o, d):
        hx, hy = self.half_size
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = -o[:, 2] / d[:, 2]
        p = o + np.nan_to_num(distance, posinf=0.0, neginf=0.0)[:, None] * d
        outside = (np.abs(p[:, 0]) > hx) | (np.abs(p[:, 1]) > hy)
        distance = np.where(outside, np.nan, distance)
        n = np.zeros_like(o)
        n[:, 2] = -np.sign(d[:, 2])
        uv = np.stack([p[:, 0] / (2 * hx) + 0.5, p[:, 1] / (2 * hy) + 0.5], 1)
        return distance, n, uv, np.zeros(len(o), dtype=np.int64)

    def _sdf(self, p):
        hx, hy = self.half_size
        dx = np.maximum(np.abs(p[..., 0]) - hx, 0.0)
        dy = np.maximum(np.abs(p[..., 1]) - hy, 0.0)
        return np.sqrt(dx * dx + dy * dy + p[..., 2] ** 2)

    def _half_extents(self):
        return (*self.half_size, 0.0)


@dataclass(kw_only=True, eq=False)
class Cylinder(Primitive):
    """A capped cylinder about the local z axis, ``radius`` and ``half_height``, centred at 0.

    Parts: 0 the side (u the angle about z, v = (z + hz) / 2hz), 1 the +z cap and 2 the
    -z cap (uv: (x, y) mapped from [-r, r] to [0, 1]).
    """

    radius: float
    half_height: float

    def _hit(self, o, d):
        r, hz = self.radius, self.half_height
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
        with np.errstate(divide="ignore", invalid="ignore"):
            root = np.sqrt(b * b - a * c)
            side = np.stack([(-b - root) / a, (-b + root) / a], 1)
            side = np.where(np.abs(o[:, 2:3] + side * d[:, 2:3]) <= hz, side, np.nan)
            caps = np.stack([(hz - o[:, 2]) / d[:, 2], (-hz - o[:, 2]) / d[:, 2]], 1)
            cap_p = o[:, None, :2] + caps[..., None] * d[:, None, :2]
            caps = np.where((cap_p**2).sum(-1) <= r * r, caps, np.nan)
        distance, k = _nearest(np.concatenate([side, caps], 1))
        part = np.maximum(k - 1, 0)  # candidates: side entry, side exit, +z cap, -z cap
        p = o + np.where(np.isfinite(distance), distance, 0.0)[:, None] * d
        n = np.zeros_like(o)
        n[:, :2] = np.where((part == 0)[:, None], p[:, :2] / r, 0.0)
        n[:, 2] = np.select([part == 1, part == 2], [1.0, -1.0], 0.0)
        uv = np.where(
            (part == 0)[:, None],
            np.stack([_angle01(p[:, 0], p[:, 1]), (p[:, 2] + hz) / (2 * hz)], 1),
            p[:, :2] / (2 * r) + 0.5,
        )
        return distance, n, uv, part

    def _sdf(self, p):
        q = np.stack(
            [
                np.linalg.norm(p[..., :2], axis=-1) - self.radius,
                np.abs(p[..., 2]) - self.half_height,
            ],
            -1,
        )
        return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(-1), 0.0)

    def _half_extents(self):
        return (self.radius, self.radius, self.half_height)


# ----------------------------------------------------------------------------- scene


@dataclass
class Hit:
    """Where rays first meet a scene; every field has the rays' leading shape ``[...]``.

    Attributes:
        distance: [...] distance along the unit ray, ``inf`` where it misses.
        points: [...,3] world hit points (zero where missed).
        normals: [...,3] unit world normals (zero where missed).
        rgb: [...,3] shaded colour in [0, 1] (zero where missed).
        primitive_ids: [...] index into ``Scene.primitives``, -1 where missed.
    """

    distance: Array
    points: Array
    normals: Array
    rgb: Array
    primitive_ids: Array

    @property
    def mask(self) -> Array:
        """[...] bool, True where the ray hit something."""
        return self.primitive_ids >= 0


@dataclass(eq=False)
class Scene:
    """Primitives under one directional light.

    Attributes:
        primitives: the surfaces; their index is the ``primitive_id`` of a hit.
        light_dir: unit world direction towards the light.
        ambient: share of the albedo lit regardless of orientation, in [0, 1].
        name, description: for the asset's ``scene.json``.
        up: the world up direction.
    """

    primitives: list[Primitive]
    light_dir: Sequence[float] = (0.0, 0.0, 1.0)
    ambient: float = 0.5
    name: str = ""
    description: str = ""
    up: Sequence[float] = (0.0, 0.0, 1.0)

    @property
    def is_dynamic(self) -> bool:
        return any(p.motion is not None for p in self.primitives)

    def trace(self, origins: Array, dirs: Array, time: float = 0.0) -> Hit:
        """First hits of rays ``origins, dirs [...,3]`` (directions unit) at ``time``."""
        origins = np.asarray(origins, dtype=np.float64)
        dirs = np.asarray(dirs, dtype=np.float64)
        shape = origins.shape[:-1]
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        distance = np.full(len(o), np.inf)
        normals, albedo = np.zeros_like(o), np.zeros_like(o)
        ids = np.full(len(o), -1, dtype=np.int64)
        for k, primitive in enumerate(self.primitives):
            rays, dist, n, a = primitive._first_hits(o, d, time)
            closer = dist < distance[rays]
            rays = rays[closer]
            distance[rays], ids[rays] = dist[closer], k
            normals[rays], albedo[rays] = n[closer], a[closer]
        distance, ids = distance.reshape(shape), ids.reshape(shape)
        normals, albedo = normals.reshape(*shape, 3), albedo.reshape(*shape, 3)
        hit = ids >= 0
        light = np.asarray(self.light_dir, dtype=np.float64)
        lambert = np.clip(normals @ (light / np.linalg.norm(light)), 0.0, 1.0)
        rgb = albedo * (self.ambient + (1.0 - self.ambient) * lambert)[..., None]
        points = np.where(
            hit[..., None], origins + np.where(hit, distance, 0.0)[..., None] * dirs, 0.0
        )
        return Hit(distance, points, normals, np.clip(rgb, 0.0, 1.0), ids)

    def bounds(self, times: Sequence[float] | None = None) -> Array:
        """[2,3] world box (min, max) holding every primitive at every one of ``times``
        (default: 101 times over [0, 1] for a dynamic scene, time 0 for a static one)."""
        if times is None:
            times = np.linspace(0.0, 1.0, 101) if self.is_dynamic else [0.0]
        boxes = np.stack([p.bounds(t) for p in self.primitives for t in times])
        return np.stack([boxes[:, 0].min(0), boxes[:, 1].max(0)])

    def nearest_primitive(self, points: Array, time: float = 0.0) -> Array:
        """[...] index of the primitive whose surface is nearest each of ``points [...,3]``."""
        dist = np.stack([np.abs(p.signed_distance(points, time)) for p in self.primitives], -1)
        return np.argmin(dist, axis=-1)

    def move_points(
        self, points: Array, primitive_ids: Array, time: float, from_time: float = 0.0
    ) -> Array:
        """Carry surface points from ``from_time`` to ``time`` with their primitives.

        Args:
            points: [...,3] world points on the surface at ``from_time``.
            primitive_ids: [...] the primitive each point lies on (-1: none).
            time, from_time: scene times in [0, 1].

        Returns:
            [...,3] world positions at ``time``; NaN where ``primitive_ids`` is -1.
        """
        points = np.asarray(points, dtype=np.float64)
        primitive_ids = np.asarray(primitive_ids)
        out = np.full(points.shape, np.nan)
        for k, primitive in enumerate(self.primitives):
            sel = primitive_ids == k
            if sel.any():
                m = primitive.world_from_local(time) @ np.linalg.inv(
                    primitive.world_from_local(from_time)
                )
                out[sel] = points[sel] @ m[:3, :3].T + m[:3, 3]
        return out


# ----------------------------------------------------------------------------- rendering


def pixel_rays(
    camtoworld: Array, K: Array, width: int, height: int, supersample: int = 1
) -> tuple[Array, Array]:
    """Rays of a pinhole camera through an S x S grid of sub-pixel centres per pixel.

    With ``supersample = 1`` the one ray of a pixel passes through its centre.

    Args:
        camtoworld: [4,4] OpenCV camera-to-world.
        K: [3,3] intrinsics in pixels.
        width, height: image size in pixels.
        supersample: S, sub-pixels per side.

    Returns:
        ``origins [H,W,S*S,3]`` and unit ``dirs [H,W,S*S,3]``, world frame.
    """
    c2w = np.asarray(camtoworld, dtype=np.float64)
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(width)[:, None] + offsets).reshape(-1)
    ys = (np.arange(height)[:, None] + offsets).reshape(-1)
    x, y = np.meshgrid(xs, ys, indexing="xy")  # [H*S, W*S]
    pix = np.stack([x, y, np.ones_like(x)], -1)
    cam = pix @ np.linalg.inv(np.asarray(K, dtype=np.float64)).T
    dirs = cam @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    s = supersample
    dirs = (
        dirs.reshape(height, s, width, s, 3)
        .transpose(0, 2, 1, 3, 4)
        .reshape(height, width, s * s, 3)
    )
    return np.broadcast_to(c2w[:3, 3], dirs.shape).copy(), dirs


def render(
    scene: Scene,
    camtoworld: Array,
    K: Array,
    width: int,
    height: int,
    time: float | None = None,
    supersample: int = 3,
) -> tuple[Array, Array, Array]:
    """Render a view of ``scene`` exactly, anti-aliased by supersampling.

    Args:
        scene: the scene.
        camtoworld: [4,4] OpenCV camera-to-world.
        K: [3,3] intrinsics in pixels.
        width, height: image size in pixels.
        time: scene time in [0, 1]; None means 0.
        supersample: S; each pixel averages S x S rays.

    Returns:
        ``rgb [H,W,3]`` float32 straight (not premultiplied) colour, the mean over the
        pixel's rays that hit (zero where none did; composite as
        ``rgb * alpha + background * (1 - alpha)``), ``alpha [H,W]`` float32 the share of
        rays that hit, and ``depth [H,W]`` float32 the z-depth (along the camera's +z) of
        the surface seen through the pixel centre, 0 where that ray misses.
    """
    time = 0.0 if time is None else float(time)
    origins, dirs = pixel_rays(camtoworld, K, width, height, supersample)
    hit = scene.trace(origins, dirs, time)
    count = hit.mask.sum(-1)
    rgb = (hit.rgb * hit.mask[..., None]).sum(-2) / np.maximum(count, 1)[..., None]
    alpha = count / supersample**2

    origins, dirs = pixel_rays(camtoworld, K, width, height, 1)
    centre = scene.trace(origins[:, :, 0], dirs[:, :, 0], time)
    z_axis = np.asarray(camtoworld, dtype=np.float64)[:3, 2]
    depth = np.where(centre.mask, centre.distance * (dirs[:, :, 0] @ z_axis), 0.0)
    return rgb.astype(np.float32), alpha.astype(np.float32), depth.astype(np.float32)


def surface_trajectories(
    scene: Scene,
    camtoworld: Array,
    K: Array,
    width: int,
    height: int,
    times: Sequence[float],
    from_time: float = 0.0,
) -> dict[str, Array]:
    """True 3D trajectories of the surface points one camera sees at ``from_time``.

    Each pixel-centre ray at ``from_time`` picks a surface point, which is carried rigidly
    with its primitive to every one of ``times``.

    Returns:
        ``xyz [T,H,W,3]`` float32 world positions (zero where ``mask0`` is False),
        ``visible [T,H,W]`` bool: the point lies in front of the camera, inside the image
        and unoccluded at that time, and ``mask0 [H,W]`` bool: the ray hit at ``from_time``.
    """
    origins, dirs = pixel_rays(camtoworld, K, width, height, 1)
    first = scene.trace(origins[:, :, 0], dirs[:, :, 0], from_time)
    mask0 = first.mask
    c2w = np.asarray(camtoworld, dtype=np.float64)
    eye, w2c_rot = c2w[:3, 3], c2w[:3, :3].T
    xyz = np.zeros((len(times), height, width, 3))
    visible = np.zeros((len(times), height, width), dtype=bool)
    for i, t in enumerate(times):
        p = scene.move_points(first.points[mask0], first.primitive_ids[mask0], t, from_time)
        offset = p - eye
        dist = np.linalg.norm(offset, axis=-1)
        cam = offset @ w2c_rot.T
        pix = cam @ np.asarray(K, dtype=np.float64).T
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = pix[:, 0] / pix[:, 2], pix[:, 1] / pix[:, 2]
        in_view = (cam[:, 2] > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
        seen = scene.trace(np.broadcast_to(eye, p.shape), offset / dist[:, None], t)
        unoccluded = seen.distance >= dist * (1.0 - 1e-6) - 1e-9
        xyz[i][mask0] = p
        visible[i][mask0] = in_view & unoccluded
    return {"xyz": xyz.astype(np.float32), "visible": visible, "mask0": mask0}


# ----------------------------------------------------------------------------- the scenes

_RED = (0.85, 0.18, 0.15)
_ORANGE = (0.95, 0.55, 0.12)
_YELLOW = (0.96, 0.84, 0.2)
_GREEN = (0.2, 0.7, 0.3)
_CYAN = (0.15, 0.75, 0.8)
_BLUE = (0.15, 0.3, 0.85)
_PURPLE = (0.55, 0.25, 0.7)
_MAGENTA = (0.85, 0.25, 0.6)
_CREAM = (0.95, 0.92, 0.82)
_WHITE = (0.95, 0.95, 0.95)
_DARK = (0.15, 0.15, 0.18)
_TEAL = (0.1, 0.45, 0.5)

_Z = (0.0, 0.0, 1.0)


def object360_scene() -> Scene:
    """A colourful static object at the origin for 360-degree views (z up, within [-1,1]^3).

    A square base plate with striped sides and a checkered top, a lat-long checkered
    sphere on it, a banded pillar, a small gradient ball and a small checkered cube.
    """
    top = -0.3  # height of the plate's top face; the object spans z in [-0.62, 0.62]
    base_sides = Stripes((_ORANGE, _CREAM), 8, axis=0)
    base = Box(
        half_size=(0.68, 0.68, 0.16),
        pose=rigid(rotation(_Z, math.radians(15)), (0.0, 0.0, top - 0.16)),
        texture=PerPart((base_sides,) * 4 + (Solid(_DARK), Checker(_TEAL, _WHITE, (6, 6)))),
    )
    return Scene(
        primitives=[
            base,
            Sphere(
                radius=0.46,
                pose=rigid(translation=(0.0, 0.0, top + 0.46)),
                texture=Checker(_BLUE, _YELLOW, (10, 5)),
            ),
            Cylinder(
                radius=0.13,
                half_height=0.45,
                pose=rigid(translation=(0.42, -0.42, top + 0.45)),
                texture=PerPart((Stripes((_RED, _WHITE), 7, axis=1), Solid(_RED), Solid(_RED))),
            ),
            Sphere(
                radius=0.2,
                pose=rigid(translation=(-0.45, 0.43, top + 0.2)),
                texture=Gradient(_GREEN, _CYAN),
            ),
            Box(
                half_size=(0.14, 0.14, 0.14),
                pose=rigid(rotation(_Z, math.radians(30)), (-0.42, -0.42, top + 0.14)),
                texture=Checker(_MAGENTA, _CREAM, (2, 2)),
            ),
        ],
        light_dir=(0.4, -0.3, 0.87),
        ambient=0.55,
        name="object360",
        description=(
            "A static colourful object at the origin: a striped, checker-topped base plate "
            "with a checkered sphere, a banded pillar, a gradient ball and a checkered cube."
        ),
        up=_Z,
    )


def forward_scene() -> Scene:
    """A forward-facing scene with depth layers (y up; the cameras look down -z from z ~ 0).

    A checkered back wall at z = -6, a checkered floor at y = -1.2 and, at increasing
    depth, a floating gradient ball (z = -1.8), a checkered sphere (z = -2.8), a
    rotated box (z = -3.8) and a banded pillar (z = -5).
    """
    y_up = (0.0, 1.0, 0.0)
    floor_y = -1.2
    return Scene(
        primitives=[
            Quad(
                half_size=(5.0, 3.8),
                pose=rigid(translation=(0.0, 1.2, -6.0)),
                texture=Checker(_CREAM, (0.55, 0.7, 0.85), (10, 8)),
            ),
            Quad(
                half_size=(5.0, 2.75),
                pose=rigid(rotation((1.0, 0.0, 0.0), -math.pi / 2), (0.0, floor_y, -3.25)),
                texture=Checker((0.6, 0.45, 0.3), (0.85, 0.75, 0.55), (10, 6)),
            ),
            Sphere(
                radius=0.25,
                pose=rigid(translation=(0.5, 0.35, -1.8)),
                texture=Gradient(_MAGENTA, _YELLOW),
            ),
            Sphere(
                radius=0.55,
                pose=rigid(translation=(-1.0, floor_y + 0.55, -2.8)),
                texture=Checker(_RED, _WHITE, (8, 4)),
            ),
            Box(
                half_size=(0.5, 0.5, 0.5),
                pose=rigid(rotation(y_up, math.radians(35)), (0.9, floor_y + 0.5, -3.8)),
                texture=PerPart(
                    (Checker(_BLUE, _WHITE, (4, 4)),) * 2
                    + (Checker(_GREEN, _WHITE, (4, 4)),) * 2
                    + (Checker(_ORANGE, _WHITE, (4, 4)),) * 2
                ),
            ),
            Cylinder(
                radius=0.35,
                half_height=1.1,
                pose=rigid(rotation((1.0, 0.0, 0.0), -math.pi / 2), (-0.1, floor_y + 1.1, -5.0)),
                texture=PerPart(
                    (Stripes((_PURPLE, _YELLOW), 8, axis=1), Solid(_PURPLE), Solid(_PURPLE))
                ),
            ),
        ],
        light_dir=(-0.3, 0.8, 0.52),
        ambient=0.6,
        name="forward",
        description=(
            "A forward-facing scene with depth layers: a checkered back wall 6 m away, a "
            "checkered floor, a floating gradient ball, a checkered sphere, a rotated box "
            "and a banded pillar at depths 1.8-5 m."
        ),
        up=y_up,
    )


# The dynamic scene's layout and motions; time t runs over [0, 1] and every motion is
# the identity at t = 0.
DISC_TOP = -0.25  # height of the static disc's top face
ORBIT_RADIUS = 0.52
BALL_RADIUS = 0.28
ORBIT_CENTRE = (ORBIT_RADIUS, 0.0, DISC_TOP + BALL_RADIUS)
HINGE = (-0.35, -0.55, DISC_TOP)


def _orbit(t: float) -> Array:
    """Half a turn about the world z axis, while the ball spins a full turn about its own."""
    spin = rigid(rotation(_Z, 2.0 * math.pi * t), pivot=ORBIT_CENTRE)
    return rigid(rotation(_Z, math.pi * t)) @ spin


def _spin_and_lift(t: float) -> Array:
    """A quarter turn about the world z axis while rising 0.35 and falling back."""
    return rigid(rotation(_Z, 0.5 * math.pi * t), (0.0, 0.0, 0.35 * math.sin(math.pi * t)))


def _raise_arm(t: float) -> Array:
    """The arm swings up 60 degrees about a hinge at its -x end (axis along world -y)."""
    return rigid(rotation((0.0, -1.0, 0.0), math.radians(60) * t), pivot=HINGE)


def dynamic_scene() -> Scene:
    """A D-NeRF-like moving object (z up, within [-1,1]^3 at all times).

    A static striped disc; a checkered ball orbiting half a turn about z while spinning
    once about its own axis; a checkered cube turning a quarter turn and bobbing up; a
    striped arm swinging up 60 degrees about a hinge. All motions are rigid.
    """
    return Scene(
        primitives=[
            Cylinder(
                radius=0.8,
                half_height=0.08,
                pose=rigid(translation=(0.0, 0.0, DISC_TOP - 0.08)),
                texture=PerPart(
                    (
                        Stripes((_TEAL, _WHITE), 16, axis=0),
                        Checker(_CREAM, _TEAL, (8, 8)),
                        Solid(_DARK),
                    )
                ),
            ),
            Sphere(
                radius=BALL_RADIUS,
                pose=rigid(translation=ORBIT_CENTRE),
                texture=Checker(_RED, _YELLOW, (8, 4)),
                motion=_orbit,
            ),
            Box(
                half_size=(0.15, 0.15, 0.15),
                pose=rigid(translation=(0.0, 0.0, DISC_TOP + 0.15)),
                texture=PerPart(
                    (Checker(_BLUE, _WHITE, (3, 3)),) * 4
                    + (Solid(_DARK), Checker(_GREEN, _WHITE, (3, 3)))
                ),
                motion=_spin_and_lift,
            ),
            Box(
                half_size=(0.35, 0.07, 0.07),
                pose=rigid(translation=(HINGE[0] + 0.35, HINGE[1], HINGE[2] + 0.07)),
                texture=Stripes((_YELLOW, _DARK), 8, axis=0),
                motion=_raise_arm,
            ),
        ],
        light_dir=(0.4, -0.3, 0.87),
        ambient=0.6,
        name="dynamic",
        description=(
            "A moving object on a static striped disc: a checkered ball orbits half a turn "
            "about z while spinning once about its own axis, a checkered cube turns a "
            "quarter turn while bobbing up 0.35, and a striped arm swings up 60 degrees "
            "about a hinge. All motions are rigid; time runs over [0, 1]."
        ),
        up=_Z,
    )


def dynamic_motion(points: Array, time: float, primitive_ids: Array | None = None) -> Array:
    """True world positions at ``time`` of surface points of ``dynamic_scene`` given at time 0.

    Args:
        points: [...,3] world points on the surface at time 0.
        time: scene time in [0, 1].
        primitive_ids: [...] the primitive each point lies on (``Hit.primitive_ids``);
            by default the primitive whose surface is nearest at time 0.

    Returns:
        [...,3] world positions at ``time``.
    """
    scene = dynamic_scene()
    if primitive_ids is None:
        primitive_ids = scene.nearest_primitive(points, 0.0)
    return scene.move_points(points, primitive_ids, time, 0.0)
