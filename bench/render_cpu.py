"""Benchmark of the pure-torch rasterizer (patchsplat.render, backend="torch") on the CPU.

    .venv/bin/python bench/render_cpu.py [--threads N] [--reps R]

Prints, for scene-like Gaussian clouds (patchsplat.render.scenes: a ground square and boxes in the
canonical frame, scales from the point spacing, one camera looking across), the forward time and the
forward + backward time (loss on colours and alphas) as "median (min)" over R runs after one warm-up:

1. the demo's size (160x120, 30k Gaussians), split into its stages, for tile sizes 4, 8 and 16;
2. growth with the number of Gaussians (10k, 30k, 100k at 160x120);
3. growth with the number of pixels (80x60, 160x120, 320x240 with 30k Gaussians);
4. against a dense reference (every Gaussian x every pixel, depth-sorted, cumprod transmittance, the
   same projection) at a size where the dense one is feasible, with the ratio and the largest
   difference between the two images.

Timings on a shared machine are noisy: the load average is printed before and after; compare the
minimum columns. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

import torch

from patchsplat.render.composite import composite_tiles
from patchsplat.render.projection import ALPHA_THRESHOLD, project_gaussians
from patchsplat.render.scenes import scene_camera, scene_like_gaussians
from patchsplat.render.tiles import intersect_tiles
from patchsplat.render.torch_backend import DEFAULT_TILE_SIZE, rasterization

NAMES = ("means", "quats", "scales", "opacities", "colors")


def timed(fn, reps: int) -> tuple[float, float]:
    """(median, min) wall time in ms of ``fn()`` over ``reps`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def fmt(median_min: tuple[float, float]) -> str:
    return f"{median_min[0]:7.1f} ({median_min[1]:6.1f})"


def leaf(scene: dict) -> dict:
    return {k: v.detach().clone().requires_grad_(True) for k, v in scene.items()}


def forward_and_backward(render, scene: dict, reps: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Timings of render(params) under no_grad, and of render + backward of a loss on colours and alphas."""
    params = leaf(scene)

    def forward():
        with torch.no_grad():
            render(params)

    def forward_backward():
        colors, alphas = render(params)[:2]
        (colors.mean() + alphas.mean()).backward()

    return timed(forward, reps), timed(forward_backward, reps)


def torch_renderer(viewmats, Ks, width, height, tile_size=DEFAULT_TILE_SIZE):
    def render(p):
        return rasterization(*(p[k] for k in NAMES), viewmats, Ks, width, height, tile_size=tile_size)
    return render


def dense_renderer(viewmats, Ks, width, height):
    """All Gaussians x all pixels in one [N, H*W] block: the comparison figure (gsplat's kernel rules)."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)              # [P, 2]

    def render(p):
        proj = project_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], viewmats, Ks, width, height)
        visible = proj.visible[0]
        order = torch.argsort(proj.depths[0].detach().masked_fill(~visible, float("inf")))[: int(visible.sum())]
        delta = proj.means2d[0, order, None, :] - pixels[None]                  # [N, P, 2]
        a, b, c = proj.conics[0, order].unbind(-1)
        sigma = 0.5 * (a[:, None] * delta[..., 0] ** 2 + c[:, None] * delta[..., 1] ** 2) + b[:, None] * delta[..., 0] * delta[..., 1]
        alpha = torch.clamp(p["opacities"][order, None] * torch.exp(-sigma), max=0.999)
        alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros_like(alpha))
        t_after = torch.cumprod(1 - alpha, dim=0)
        alpha = torch.where(t_after > 1e-4, alpha, torch.zeros_like(alpha))   # stop, prefix-monotone
        t_before = torch.cat([torch.ones_like(t_after[:1]), torch.cumprod(1 - alpha, dim=0)[:-1]])
        weights = alpha * t_before                                              # [N, P]
        colors = (weights.T @ p["colors"][order]).reshape(1, height, width, -1)
        alphas = weights.sum(0).reshape(1, height, width, 1)
        return colors, alphas

    return render


def scene(n: int, width: int, height: int, seed: int = 0):
    viewmats, Ks = scene_camera(width, height)
    return scene_like_gaussians(n, seed=seed), viewmats, Ks


def overlaps(gaussians: dict, viewmats, Ks, width, height, tile_size=DEFAULT_TILE_SIZE) -> tuple[int, float]:
    """(visible Gaussians, mean number of Gaussians whose tile list covers a pixel)."""
    with torch.no_grad():
        proj = project_gaussians(*(gaussians[k] for k in NAMES[:4]), viewmats, Ks, width, height)
        tiles = intersect_tiles(proj.means2d, proj.radii, proj.depths, width, height, tile_size)
    return int(proj.visible.sum()), tiles.flatten_ids.numel() * tile_size ** 2 / (width * height)


def stages(gaussians: dict, viewmats, Ks, width, height, reps: int) -> str:
    """Forward-only time of each stage at the default tile size."""
    g = gaussians
    project = lambda: project_gaussians(g["means"], g["quats"], g["scales"], g["opacities"], viewmats, Ks, width, height)
    with torch.no_grad():
        proj = project()
        tiles = intersect_tiles(proj.means2d, proj.radii, proj.depths, width, height, DEFAULT_TILE_SIZE)
        t_project = timed(project, reps)
        t_tiles = timed(lambda: intersect_tiles(proj.means2d, proj.radii, proj.depths, width, height, DEFAULT_TILE_SIZE), reps)
        t_composite = timed(lambda: composite_tiles(proj.means2d.reshape(-1, 2), proj.conics.reshape(-1, 3),
                                                     g["opacities"], g["colors"], tiles), reps)
    return f"project {fmt(t_project)}  tile lists {fmt(t_tiles)}  composite {fmt(t_composite)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads; load average {os.getloadavg()[0]:.2f}")
    print("times in ms: median (min) over", args.reps, "runs\n")
    header = f"{'':34s}{'forward':>17s}{'forward+backward':>20s}"

    print("1. demo size 160x120, 30k Gaussians")
    g, viewmats, Ks = scene(30_000, 160, 120)
    visible, per_pixel = overlaps(g, viewmats, Ks, 160, 120)
    print(f"   {visible} visible, a pixel's tile lists hold {per_pixel:.0f} Gaussians on average")
    print("   stages (forward):", stages(g, viewmats, Ks, 160, 120, args.reps))
    print(header)
    for tile_size in (4, 8, 16):
        fwd, fwd_bwd = forward_and_backward(torch_renderer(viewmats, Ks, 160, 120, tile_size), g, args.reps)
        mark = " (default)" if tile_size == DEFAULT_TILE_SIZE else ""
        print(f"   tile size {tile_size:2d}{mark:21s}{fmt(fwd)}   {fmt(fwd_bwd)}")

    print("\n2. Gaussians at 160x120")
    print(header)
    for n in (10_000, 30_000, 100_000):
        g, viewmats, Ks = scene(n, 160, 120)
        fwd, fwd_bwd = forward_and_backward(torch_renderer(viewmats, Ks, 160, 120), g, args.reps)
        print(f"   {n:>7d} Gaussians{'':16s}{fmt(fwd)}   {fmt(fwd_bwd)}")

    print("\n3. pixels with 30k Gaussians")
    print(header)
    for width, height in ((80, 60), (160, 120), (320, 240)):
        g, viewmats, Ks = scene(30_000, width, height)
        fwd, fwd_bwd = forward_and_backward(torch_renderer(viewmats, Ks, width, height), g, args.reps)
        print(f"   {width}x{height:<27d}{fmt(fwd)}   {fmt(fwd_bwd)}")

    print("\n4. against the dense reference (all Gaussians x all pixels), 64x48")
    print(header)
    for n in (300, 1000):
        g, viewmats, Ks = scene(n, 64, 48, seed=1)
        tiled = torch_renderer(viewmats, Ks, 64, 48)
        dense = dense_renderer(viewmats, Ks, 64, 48)
        t_fwd, t_fb = forward_and_backward(tiled, g, args.reps)
        d_fwd, d_fb = forward_and_backward(dense, g, args.reps)
        with torch.no_grad():
            difference = (tiled(g)[0] - dense(g)[0]).abs().max().item()
        print(f"   {n:>5d} Gaussians, tiled{'':13s}{fmt(t_fwd)}   {fmt(t_fb)}")
        print(f"   {n:>5d} Gaussians, dense{'':13s}{fmt(d_fwd)}   {fmt(d_fb)}")
        print(f"   {'':5s} dense / tiled (medians){'':7s}{d_fwd[0] / t_fwd[0]:6.1f}x   {d_fb[0] / t_fb[0]:15.1f}x"
              f"    max |image difference| {difference:.1e}")

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of this process {peak_mb:.0f} MB; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
