"""Where things are: objects resting on the ground and cameras along paths and orbits.

Contract: :func:`build_layout` is a pure function of the config. The world is z-up; the ground is
the plane z = 0 over a square ``GROUND_SCALE`` times larger than the ``extent`` x ``extent`` area
that holds every object, every camera and every sampled ground point. Objects are yaw-rotated
boxes and spheres that do not overlap (their footprint circles keep ``OBJECT_GAP`` apart). The area
is cut into ``g x g`` cells (``g >= 2``, so the four quadrants are cells or unions of cells); every
cell gets objects round-robin, half of them clustered around the cell centre, and one camera orbit
circles each cell centre. The other half of the cameras fly a serpentine (lawnmower) path over the
whole area. Every camera pitches down far enough that the top image edge still looks at the
ground, so images show ground and objects and hardly any sky.

Poses are COLMAP ``cam_from_world`` (x right, y down, z forward): ``x_cam = R @ x_world + t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from patchsplat.config import DemoSceneConfig
from patchsplat.errors import InputError

BOX, SPHERE = 0, 1
PATH, ORBIT = 0, 1
KIND_NAMES = {BOX: "box", SPHERE: "sphere"}

# The ground square is larger than the object/camera area so views near the edge still see ground.
GROUND_SCALE = 1.5
OBJECT_GAP = 0.4
PLACEMENT_TRIES = 400
# Cameras hovering over an object are kept above its top by this much, or by this share of its
# height if more (they must never sit inside one, and should see past a tall one).
CAMERA_CLEARANCE = 1.0
CAMERA_CLEARANCE_SHARE = 0.25
ORBIT_TARGET_Z = 0.6
CAMERAS_PER_ORBIT = 12


@dataclass(frozen=True)
class SceneObjects:
    """All objects as parallel arrays (vectorised ray casting wants structure-of-arrays)."""

    kind: np.ndarray  # (K,) int8: BOX or SPHERE
    centre: np.ndarray  # (K, 3): box centre (z = half height) or sphere centre (z = radius)
    half_size: np.ndarray  # (K, 3): box half extents in its own (yawed) frame; (r, r, r) for a sphere
    yaw: np.ndarray  # (K,): rotation about +z in radians (0 for spheres)
    base_colour: np.ndarray  # (K, 3) in [0, 1]
    accent_colour: np.ndarray  # (K, 3) in [0, 1]: the second checker colour
    period: np.ndarray  # (K,): checker period in metres, in the surface's own coordinates
    scaled: np.ndarray  # (K,) bool: enlarged by the large_scale_region defect

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @property
    def radius_xy(self) -> np.ndarray:
        """Radius of the footprint circle (a circle around the whole ground footprint)."""
        box_r = np.hypot(self.half_size[:, 0], self.half_size[:, 1])
        return np.where(self.kind == SPHERE, self.half_size[:, 0], box_r)

    @property
    def bounding_radius(self) -> np.ndarray:
        """Radius of a sphere around the object centred at ``centre``."""
        return np.where(self.kind == SPHERE, self.half_size[:, 0], np.linalg.norm(self.half_size, axis=1))

    @property
    def top(self) -> np.ndarray:
        return self.centre[:, 2] + self.half_size[:, 2]


@dataclass(frozen=True)
class Cameras:
    """One shared PINHOLE camera and one pose per image (image i is named ``f"{i:05d}.png"``)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    rotation: np.ndarray  # (N, 3, 3) cam_from_world rotation
    translation: np.ndarray  # (N, 3) cam_from_world translation
    centre: np.ndarray  # (N, 3) camera centres in the world
    role: np.ndarray  # (N,) int8: PATH or ORBIT

    def __len__(self) -> int:
        return int(self.rotation.shape[0])

    def to_camera(self, index: int, points: np.ndarray) -> np.ndarray:
        """World points (P, 3) -> camera-frame points (P, 3)."""
        return points @ self.rotation[index].T + self.translation[index]

    def project_camera_points(self, cam_points: np.ndarray) -> np.ndarray:
        """Camera-frame points (P, 3) with z > 0 -> pixel coordinates (P, 2), COLMAP convention
        (the top-left corner of the image is (0, 0), the first pixel centre is (0.5, 0.5))."""
        inv_z = 1.0 / cam_points[:, 2]
        return np.stack(
            [self.fx * cam_points[:, 0] * inv_z + self.cx, self.fy * cam_points[:, 1] * inv_z + self.cy], axis=1
        )

    def pixel_directions(self, index: int, uv: np.ndarray) -> np.ndarray:
        """Pixel coordinates (P, 2) -> world ray directions (P, 3), not normalised (camera z = 1)."""
        local = np.stack(
            [(uv[:, 0] - self.cx) / self.fx, (uv[:, 1] - self.cy) / self.fy, np.ones(len(uv))], axis=1
        )
        return local @ self.rotation[index]  # R^T applied row-wise

    def sees_spheres(self, index: int, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """Whether spheres (K, 3)/(K,) may be (partly) inside the view frustum of camera ``index``.

        Conservative: tests the sphere against the four side planes and the camera plane.
        """
        local = self.to_camera(index, centres)
        x0, x1 = -self.cx / self.fx, (self.width - self.cx) / self.fx
        y0, y1 = -self.cy / self.fy, (self.height - self.cy) / self.fy
        # Inward normals of the planes through the centre and each image edge.
        normals = np.array([[1.0, 0.0, -x0], [-1.0, 0.0, x1], [0.0, 1.0, -y0], [0.0, -1.0, y1]])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        inside = (local @ normals.T >= -radii[:, None]).all(axis=1)
        return inside & (local[:, 2] >= -radii)

    def corner_directions(self, index: int) -> np.ndarray:
        """World directions (4, 3) through the four image corners."""
        corners = np.array([[0.0, 0.0], [self.width, 0.0], [0.0, self.height], [self.width, self.height]])
        return self.pixel_directions(index, corners)


@dataclass(frozen=True)
class SceneLayout:
    """The whole static scene: area, ground, objects and cameras."""

    area_half: float  # objects, cameras and ground points lie in [-area_half, area_half]^2
    ground_half: float  # the ground plane is the square [-ground_half, ground_half]^2
    cell_side: float
    cluster_centres: np.ndarray  # (g*g, 2): cell centres, each the target of one orbit
    objects: SceneObjects
    cameras: Cameras
    large_scale_factor: float  # the large_scale_region defect (1.0 = off)

    @property
    def max_object_top(self) -> float:
        return float(self.objects.top.max()) if len(self.objects) else 0.0


def objects_in_view(layout: SceneLayout, index: int) -> np.ndarray:
    """Indices of the objects that may appear in view ``index`` (frustum culling of bounding spheres)."""
    objects = layout.objects
    if len(objects) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(layout.cameras.sees_spheres(index, objects.centre, objects.bounding_radius))


def vertical_fov(config: DemoSceneConfig) -> float:
    """Vertical field of view in radians (fov_deg is horizontal)."""
    return 2.0 * math.atan(math.tan(math.radians(config.fov_deg) / 2.0) * config.height / config.width)


def in_large_scale_region(xy: np.ndarray) -> np.ndarray:
    """The +x,+y quadrant, where the large_scale_region defect applies."""
    xy = np.asarray(xy)
    return (xy[..., 0] > 0.0) & (xy[..., 1] > 0.0)


def split_cameras(num_cameras: int) -> tuple[int, int]:
    """(path cameras, orbit cameras): about half each."""
    n_path = max(2, num_cameras // 2)
    return n_path, num_cameras - n_path


def cluster_grid_side(num_orbit_cameras: int) -> int:
    # Orbits of about CAMERAS_PER_ORBIT views each; at least 2x2 so every quadrant has a cluster.
    return max(2, int(round(math.sqrt(num_orbit_cameras / CAMERAS_PER_ORBIT))))


def build_layout(config: DemoSceneConfig) -> SceneLayout:
    """Place objects and cameras deterministically from ``config`` (see the module docstring)."""
    area_half = config.extent / 2.0
    n_path, n_orbit = split_cameras(config.num_cameras)
    side = cluster_grid_side(n_orbit)
    cell_side = config.extent / side
    ticks = -area_half + (np.arange(side) + 0.5) * cell_side
    cluster_centres = np.array([[x, y] for y in ticks for x in ticks])
    factor = float(config.defects.large_scale_region)

    objects = _place_objects(config, np.random.default_rng([config.seed, 1]), area_half, cluster_centres, cell_side, factor)
    cameras = _place_cameras(
        config, np.random.default_rng([config.seed, 2]), area_half, cluster_centres, cell_side, objects, n_path, n_orbit, factor
    )
    return SceneLayout(
        area_half=area_half,
        ground_half=area_half * GROUND_SCALE,
        cell_side=cell_side,
        cluster_centres=cluster_centres,
        objects=objects,
        cameras=cameras,
        large_scale_factor=factor,
    )


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _place_objects(
    config: DemoSceneConfig,
    rng: np.random.Generator,
    area_half: float,
    cluster_centres: np.ndarray,
    cell_side: float,
    factor: float,
) -> SceneObjects:
    count = config.num_boxes + config.num_spheres
    kinds = np.array([BOX] * config.num_boxes + [SPHERE] * config.num_spheres, dtype=np.int8)
    kinds = kinds[rng.permutation(count)]
    n_cells = len(cluster_centres)

    centre = np.zeros((count, 3))
    half_size = np.zeros((count, 3))
    yaw = np.zeros(count)
    scaled = np.zeros(count, dtype=bool)
    placed_xy = np.zeros((count, 2))
    placed_r = np.zeros(count)

    for i in range(count):
        if kinds[i] == BOX:
            size = np.array([rng.uniform(0.35, 1.1), rng.uniform(0.35, 1.1), rng.uniform(0.3, 1.5)])
            angle = rng.uniform(0.0, math.pi / 2.0)
            base_r = float(np.hypot(size[0], size[1]))
        else:
            size = np.full(3, rng.uniform(0.4, 1.1))
            angle = 0.0
            base_r = float(size[0])
        cell_xy = cluster_centres[i % n_cells]
        clustered = (i // n_cells) % 2 == 0
        for attempt in range(PLACEMENT_TRIES):
            # Clustered first, then anywhere in the cell, then anywhere in the area: crowded cells
            # still get placed somewhere instead of failing.
            if clustered and attempt < PLACEMENT_TRIES // 4:
                xy = cell_xy + rng.normal(0.0, 0.2 * cell_side, 2)
            elif attempt < PLACEMENT_TRIES // 2:
                xy = cell_xy + rng.uniform(-0.5 * cell_side, 0.5 * cell_side, 2)
            else:
                xy = rng.uniform(-area_half, area_half, 2)
            scale = factor if (xy[0] > 0.0 and xy[1] > 0.0) else 1.0
            radius = base_r * scale
            if np.any(np.abs(xy) + radius > area_half):
                continue
            if i and np.any(np.hypot(*(placed_xy[:i] - xy).T) < placed_r[:i] + radius + OBJECT_GAP):
                continue
            break
        else:
            raise InputError(
                "scene.demo",
                f"cannot place {count} objects without overlaps in a {config.extent:g} m area "
                "(raise extent or lower num_boxes/num_spheres)",
                kind="bad_params",
            )
        half_size[i] = size * scale
        centre[i] = [xy[0], xy[1], half_size[i, 2]]
        yaw[i] = angle
        scaled[i] = scale != 1.0
        placed_xy[i] = xy
        placed_r[i] = radius

    hue = rng.uniform(0.0, 1.0, count)
    base_colour = _hsv_to_rgb(hue, rng.uniform(0.35, 0.7, count), rng.uniform(0.6, 0.9, count))
    accent_colour = _hsv_to_rgb((hue + rng.uniform(0.1, 0.4, count)) % 1.0, rng.uniform(0.3, 0.6, count), rng.uniform(0.3, 0.5, count))
    period = rng.uniform(0.5, 1.0, count)
    return SceneObjects(kinds, centre, half_size, yaw, base_colour, accent_colour, period, scaled)


def look_rotation(forward: np.ndarray) -> np.ndarray:
    """cam_from_world rotations (N, 3, 3) for forward directions (N, 3), keeping image 'down' toward -z."""
    forward = forward / np.linalg.norm(forward, axis=1, keepdims=True)
    right = np.stack([forward[:, 1], -forward[:, 0], np.zeros(len(forward))], axis=1)
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


def _forward_from_yaw_pitch(yaw: np.ndarray, pitch: float) -> np.ndarray:
    return np.stack(
        [math.cos(pitch) * np.cos(yaw), math.cos(pitch) * np.sin(yaw), np.full(len(yaw), -math.sin(pitch))], axis=1
    )


def _place_cameras(
    config: DemoSceneConfig,
    rng: np.random.Generator,
    area_half: float,
    cluster_centres: np.ndarray,
    cell_side: float,
    objects: SceneObjects,
    n_path: int,
    n_orbit: int,
    scale_factor: float,
) -> Cameras:
    half_vfov = vertical_fov(config) / 2.0
    # Pitched down so that even the top image edge looks at the ground a few metres ahead.
    path_pitch = min(max(half_vfov + math.radians(25.0), math.radians(30.0)), math.radians(80.0))
    orbit_pitch = min(max(half_vfov + math.radians(18.0), math.radians(25.0)), math.radians(80.0))
    path_height = min(max(0.19 * config.extent, 1.5), 4.5)

    # Serpentine path: rows along x, alternating direction, evenly spaced stations along its length.
    rows = max(2, int(round(math.sqrt(n_path))))
    row_half = 0.38 * config.extent
    row_length = 2.0 * row_half
    station = (np.arange(n_path) + 0.5) * rows * row_length / n_path
    row = np.minimum((station // row_length).astype(int), rows - 1)
    along = station - row * row_length
    heading = np.where(row % 2 == 0, 1.0, -1.0)
    path_xy = np.stack([heading * (along - row_half), -row_half + row * (2.0 * row_half / (rows - 1))], axis=1)
    sway = math.radians(20.0) * np.sin(2.0 * math.pi * station / row_length)
    heading_angle = np.where(heading > 0, 0.0, math.pi) + sway
    # Turn the view toward the middle near the area's edge so edge views look into the scene.
    look = np.stack([np.cos(heading_angle), np.sin(heading_angle)], axis=1) - 0.9 * path_xy / area_half
    path_yaw = np.arctan2(look[:, 1], look[:, 0])
    path_centre = np.column_stack([path_xy, path_height + rng.uniform(-0.25, 0.25, n_path)])
    path_forward = _forward_from_yaw_pitch(path_yaw, path_pitch)

    # Orbits: cameras shared out over the cells, evenly spaced in angle around each cell centre.
    n_cells = len(cluster_centres)
    per_cell = np.full(n_cells, n_orbit // n_cells) + (np.arange(n_cells) < n_orbit % n_cells)
    orbit_centre = np.zeros((n_orbit, 3))
    orbit_forward = np.zeros((n_orbit, 3))
    index = 0
    for cell, count in enumerate(per_cell):
        if count == 0:
            continue
        radius = min(max(0.36 * cell_side, 2.5), 6.0) * rng.uniform(0.9, 1.1)
        if in_large_scale_region(cluster_centres[cell]):
            # Enlarged objects: step back with them, as far as the cell allows.
            radius = max(radius, min(radius * scale_factor, 0.5 * cell_side))
        phase = rng.uniform(0.0, 2.0 * math.pi)
        angles = phase + 2.0 * math.pi * np.arange(count) / count
        target = np.array([*cluster_centres[cell], ORBIT_TARGET_Z])
        ring = cluster_centres[cell] + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        height = ORBIT_TARGET_Z + radius * math.tan(orbit_pitch)
        orbit_centre[index : index + count] = np.column_stack([ring, np.full(count, height)])
        orbit_forward[index : index + count] = target - orbit_centre[index : index + count]
        index += count

    centre = np.concatenate([path_centre, orbit_centre])
    forward = np.concatenate([path_forward, orbit_forward])
    role = np.array([PATH] * n_path + [ORBIT] * n_orbit, dtype=np.int8)
    centre = _lift_above_objects(centre, objects)

    rotation = look_rotation(forward)
    translation = -np.einsum("nij,nj->ni", rotation, centre)
    fx = (config.width / 2.0) / math.tan(math.radians(config.fov_deg) / 2.0)
    return Cameras(
        width=config.width,
        height=config.height,
        fx=fx,
        fy=fx,
        cx=config.width / 2.0,
        cy=config.height / 2.0,
        rotation=rotation,
        translation=translation,
        centre=centre,
        role=role,
    )


def _lift_above_objects(centre: np.ndarray, objects: SceneObjects) -> np.ndarray:
    """Raise any camera hovering over (or inside) an object to a clearance above its top."""
    if len(objects) == 0:
        return centre
    centre = centre.copy()
    radius = objects.radius_xy + 0.6
    top = objects.top + np.maximum(CAMERA_CLEARANCE, CAMERA_CLEARANCE_SHARE * objects.top)
    for start in range(0, len(centre), 1024):
        chunk = centre[start : start + 1024]
        dist = np.hypot(chunk[:, None, 0] - objects.centre[None, :, 0], chunk[:, None, 1] - objects.centre[None, :, 1])
        needed = np.where(dist < radius[None, :], top[None, :], -np.inf).max(axis=1)
        chunk[:, 2] = np.maximum(chunk[:, 2], needed)
    return centre


def view_footprints(cameras: Cameras, z_top: float, max_distance: float) -> np.ndarray:
    """(N, 4) boxes [xmin, ymin, xmax, ymax] holding everything each camera can see with 0 <= z <= z_top.

    The frustum cut by the slab 0 <= z <= z_top is convex; its vertices are the camera centre (if
    inside the slab) and the points where the four corner rays enter and leave the slab, so the box
    of those points bounds it. A ray that stays in the slab is cut at ``max_distance``.
    """
    boxes = np.zeros((len(cameras), 4))
    for i in range(len(cameras)):
        c = cameras.centre[i]
        dirs = cameras.corner_directions(i)
        dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        dz = dirs[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t_low = (0.0 - c[2]) / dz
            t_high = (z_top - c[2]) / dz
        inside = 0.0 <= c[2] <= z_top
        flat = np.abs(dz) < 1e-12
        t_enter = np.where(flat, 0.0, np.maximum(np.minimum(t_low, t_high), 0.0))
        t_exit = np.where(flat, np.inf if inside else -np.inf, np.maximum(t_low, t_high))
        crosses = t_exit >= t_enter
        t_enter = np.minimum(t_enter, max_distance)[crosses]
        t_exit = np.minimum(t_exit, max_distance)[crosses]
        ends = np.concatenate([t_enter, t_exit])
        points = np.concatenate([c[None, :2], c[None, :2] + ends[:, None] * np.concatenate([dirs[crosses], dirs[crosses]])[:, :2]])
        boxes[i] = [*points.min(axis=0), *points.max(axis=0)]
    return boxes
