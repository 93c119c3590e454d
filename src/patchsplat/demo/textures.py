"""Procedural, view-independent surface colour: texture (albedo) times fixed Lambertian lighting.

Contract: colours are floats in [0, 1]. Everything here depends only on the surface point and its
normal, never on the viewer, so a 3D point's colour is the colour every camera sees there. The
patterns are deliberately low frequency (checkers of 0.5-1 m, a ground of slow colour waves and a
soft 2 m grid) so a Gaussian-splat model can fit the images at low resolution.
"""

from __future__ import annotations

import numpy as np

from patchsplat.demo.layout import SPHERE, SceneObjects
from patchsplat.demo.raycast import GROUND, SKY

SUN_DIRECTION = np.array([0.45, 0.3, 0.85]) / np.linalg.norm([0.45, 0.3, 0.85])
AMBIENT = 0.4
DIFFUSE = 0.7
GROUND_BASE = np.array([0.46, 0.50, 0.34])
GRID_PERIOD = 2.0
GRID_LINE_WIDTH = 0.08
SKY_HORIZON = np.array([0.82, 0.86, 0.92])
SKY_ZENITH = np.array([0.36, 0.56, 0.86])


def _soft_checker(u: np.ndarray, v: np.ndarray, period: np.ndarray | float) -> np.ndarray:
    # A checker with smooth edges (a ramp a sixth of a cell wide) so it does not alias when sampled.
    s = np.sin(np.pi * u / period) * np.sin(np.pi * v / period)
    return np.clip(0.5 + 1.5 * s, 0.0, 1.0)


def ground_albedo(xy: np.ndarray) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]
    wave_a = np.sin(2 * np.pi * x / 7.3 + 0.4) * np.sin(2 * np.pi * y / 5.1 + 1.3)
    wave_b = np.sin(2 * np.pi * (x + y) / 11.0)
    wave_c = np.sin(2 * np.pi * (x - 0.6 * y) / 4.3 + 2.0)
    colour = (
        GROUND_BASE
        + 0.10 * wave_a[:, None] * np.array([1.0, 0.7, 0.2])
        + 0.08 * wave_b[:, None] * np.array([-0.2, 0.4, 0.9])
        + 0.05 * wave_c[:, None] * np.array([0.8, 0.8, 0.8])
    )
    # Distance to the nearest grid line, in metres, along x and along y.
    dx = np.abs(x / GRID_PERIOD - np.round(x / GRID_PERIOD)) * GRID_PERIOD
    dy = np.abs(y / GRID_PERIOD - np.round(y / GRID_PERIOD)) * GRID_PERIOD
    line = np.exp(-((np.minimum(dx, dy) / GRID_LINE_WIDTH) ** 2))
    return np.clip(colour * (1.0 - 0.35 * line[:, None]), 0.0, 1.0)


def _box_albedo(objects: SceneObjects, k: int, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    cos, sin = np.cos(objects.yaw[k]), np.sin(objects.yaw[k])
    offset = points - objects.centre[k]
    # Coordinates from the box corner, so the checker lines up with the box edges.
    local = np.stack([cos * offset[:, 0] + sin * offset[:, 1], -sin * offset[:, 0] + cos * offset[:, 1], offset[:, 2]], axis=1)
    local += objects.half_size[k]
    local_n = np.stack([cos * normals[:, 0] + sin * normals[:, 1], -sin * normals[:, 0] + cos * normals[:, 1], normals[:, 2]], axis=1)
    axis = np.argmax(np.abs(local_n), axis=1)
    u = np.where(axis == 0, local[:, 1], local[:, 0])
    v = np.where(axis == 2, local[:, 1], local[:, 2])
    c = _soft_checker(u, v, objects.period[k])[:, None]
    return objects.accent_colour[k] + (objects.base_colour[k] - objects.accent_colour[k]) * c


def _sphere_albedo(objects: SceneObjects, k: int, points: np.ndarray) -> np.ndarray:
    radius = objects.half_size[k, 0]
    offset = points - objects.centre[k]
    longitude = np.arctan2(offset[:, 1], offset[:, 0])
    latitude = np.arcsin(np.clip(offset[:, 2] / radius, -1.0, 1.0))
    # A whole number of checker cycles around, so the pattern closes on itself.
    cycles = max(1, int(round(np.pi * radius / objects.period[k])))
    s = np.sin(cycles * longitude) * np.sin(np.pi * radius * latitude / objects.period[k])
    c = np.clip(0.5 + 1.5 * s, 0.0, 1.0)[:, None]
    return objects.accent_colour[k] + (objects.base_colour[k] - objects.accent_colour[k]) * c


def albedo(objects: SceneObjects, surface: np.ndarray, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Texture colour (P, 3) of surface points (sky rows are left black)."""
    colour = np.zeros_like(points)
    ground = surface == GROUND
    colour[ground] = ground_albedo(points[ground, :2])
    for k in np.unique(surface[surface > GROUND]) - 1:
        rows = surface == k + 1
        if objects.kind[k] == SPHERE:
            colour[rows] = _sphere_albedo(objects, int(k), points[rows])
        else:
            colour[rows] = _box_albedo(objects, int(k), points[rows], normals[rows])
    return colour


def shaded_colour(objects: SceneObjects, surface: np.ndarray, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """What a camera sees at a surface point: albedo x (ambient + sun), view-independent."""
    light = AMBIENT + DIFFUSE * np.maximum(normals @ SUN_DIRECTION, 0.0)
    return np.clip(albedo(objects, surface, points, normals) * light[:, None], 0.0, 1.0)


def sky_colour(dirs: np.ndarray) -> np.ndarray:
    """Smooth gradient by elevation; below the horizon (past the ground's edge) a flat haze."""
    elevation = dirs[:, 2] / np.linalg.norm(dirs, axis=1)
    blend = np.sqrt(np.clip(elevation, 0.0, 1.0))[:, None]
    return SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * blend


def radiance(objects: SceneObjects, surface: np.ndarray, points: np.ndarray, normals: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Colour of ray hits: shaded surface colour, or the sky where ``surface`` is SKY."""
    colour = shaded_colour(objects, surface, points, normals)
    sky = surface == SKY
    colour[sky] = sky_colour(dirs[sky])
    return colour
