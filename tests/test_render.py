"""Tests of patchsplat.render: the pure-torch rasterizer against a plain dense reference, its behaviour,
its gradients, its use by gsplat's DefaultStrategy on CPU, and (on a GPU machine) against gsplat.

The dense reference below is deliberately naive and independent of the code under test: per camera it
projects every Gaussian with 3x3 matrix algebra, then walks the Gaussians front to back over ALL pixels,
keeping a per-pixel transmittance and "stopped" flag, with gsplat's CUDA-kernel rules.
"""

from __future__ import annotations

import math

import pytest
import torch

from patchsplat.render import RenderOutput, rasterize, select_backend
from patchsplat.render import gsplat_ops
from patchsplat.render.projection import project_gaussians
from patchsplat.render.scenes import look_at, pinhole_intrinsics, scene_camera, scene_like_gaussians
from patchsplat.render.torch_backend import rasterization as torch_rasterization

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")

PARAM_NAMES = ("means", "quats", "scales", "opacities", "colors")


# ----------------------------------------------------------------------------------------------------
# Independent dense reference
# ----------------------------------------------------------------------------------------------------

def _rotation(q):
    w, x, y, z = q / q.norm()
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
    ])


def dense_reference(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                    backgrounds=None, eps2d=0.3, near_plane=0.01):
    """(colors [C, H, W, D], alphas [C, H, W, 1]) by brute force; colors [N, D] post-activation."""
    dtype = means.dtype
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype) + 0.5, torch.arange(width, dtype=dtype) + 0.5, indexing="ij")
    images, alphas = [], []
    for cam in range(viewmats.shape[0]):
        rot, trans, K = viewmats[cam, :3, :3], viewmats[cam, :3, 3], Ks[cam]
        splats = []
        for g in range(means.shape[0]):
            p = rot @ means[g] + trans
            if p[2] < near_plane or opacities[g] < 1.0 / 255.0:
                continue
            R = _rotation(quats[g])
            cov_cam = rot @ R @ torch.diag(scales[g] ** 2) @ R.T @ rot.T
            fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
            # Jacobian at the mean clamped to 1.3x the field of view (gsplat's persp_proj).
            tx = p[2] * torch.clamp(p[0] / p[2], -(cx / fx + 0.15 * width / fx), (width - cx) / fx + 0.15 * width / fx)
            ty = p[2] * torch.clamp(p[1] / p[2], -(cy / fy + 0.15 * height / fy), (height - cy) / fy + 0.15 * height / fy)
            zero = torch.zeros((), dtype=dtype)
            J = torch.stack([torch.stack([fx / p[2], zero, -fx * tx / p[2] ** 2]),
                             torch.stack([zero, fy / p[2], -fy * ty / p[2] ** 2])])
            cov2d = J @ cov_cam @ J.T + eps2d * torch.eye(2, dtype=dtype)
            conic = torch.linalg.inv(cov2d)
            mean2d = torch.stack([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])
            splats.append((p[2].item(), g, mean2d, conic))
        splats.sort(key=lambda s: (s[0], s[1]))
        T = torch.ones(height, width, dtype=dtype)
        stopped = torch.zeros(height, width, dtype=torch.bool)
        image = torch.zeros(height, width, colors.shape[-1], dtype=dtype)
        for _, g, mean2d, conic in splats:
            dx, dy = mean2d[0] - xs, mean2d[1] - ys
            sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
            alpha = torch.clamp(opacities[g] * torch.exp(-sigma), max=0.999)
            counts = (alpha >= 1.0 / 255.0) & ~stopped
            next_T = T * (1 - alpha)
            stops_here = counts & (next_T <= 1e-4)
            stopped = stopped | stops_here
            counts = counts & ~stops_here
            image = image + torch.where(counts, alpha * T, torch.zeros_like(T))[..., None] * colors[g]
            T = torch.where(counts, next_T, T)
        if backgrounds is not None:
            image = image + T[..., None] * backgrounds[cam]
        images.append(image)
        alphas.append(1 - T)
    return torch.stack(images), torch.stack(alphas)[..., None]


# ----------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------

def random_scene(n, seed, dtype=torch.float64, width=40, height=30, n_cameras=1, opacity_range=(0.05, 0.95)):
    gen = torch.Generator().manual_seed(seed)
    params = {
        "means": torch.randn(n, 3, generator=gen, dtype=dtype) * torch.tensor([0.6, 0.45, 0.4], dtype=dtype),
        "quats": torch.randn(n, 4, generator=gen, dtype=dtype),
        "scales": torch.rand(n, 3, generator=gen, dtype=dtype) * 0.15 + 0.02,
        "opacities": torch.rand(n, generator=gen, dtype=dtype) * (opacity_range[1] - opacity_range[0]) + opacity_range[0],
        "colors": torch.rand(n, 3, generator=gen, dtype=dtype),
    }
    eyes = [(0.0, 0.0, -2.5), (0.8, -0.3, -2.3), (-0.7, 0.4, -2.4)]
    viewmats = torch.stack([look_at(eyes[c], (0.0, 0.0, 0.0), up=(0.0, -1.0, 0.0)) for c in range(n_cameras)]).to(dtype)
    Ks = pinhole_intrinsics(width, height, 55.0)[None].expand(n_cameras, 3, 3).to(dtype)
    return params, viewmats, Ks, width, height


def add_opaque_stack(scene, viewmat, K):
    """Append Gaussians that stress the kernel's rules in camera ``viewmat``: 8 opaque ones stacked along
    the optical axis (pixels reach the 1e-4 transmittance stop with more Gaussians behind) and 4 with
    opacity 1 centred exactly on pixel centres (alpha hits the 0.999 clamp there)."""
    dtype = scene["means"].dtype
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]

    def world(pixel_x, pixel_y, depth):
        cam = torch.tensor([(pixel_x - K[0, 2]) / K[0, 0] * depth, (pixel_y - K[1, 2]) / K[1, 1] * depth, depth], dtype=dtype)
        return rot.T @ (cam - trans)

    cx, cy = K[0, 2].item(), K[1, 2].item()
    stack = [world(cx + 0.3, cy - 0.2, 1.5 + 0.2 * i) for i in range(8)]
    pinned = [world(math.floor(cx) + dx + 0.5, math.floor(cy) + dy + 0.5, 1.2) for dx, dy in ((-6, -4), (5, 3), (-4, 5), (6, -5))]
    extra = {
        "means": torch.stack(stack + pinned),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype).expand(12, 4),
        "scales": torch.tensor([0.25] * 8 + [0.03] * 4, dtype=dtype)[:, None].expand(12, 3),
        "opacities": torch.tensor([0.9] * 8 + [1.0] * 4, dtype=dtype),
        "colors": torch.rand(12, 3, generator=torch.Generator().manual_seed(0), dtype=dtype),
    }
    return {k: torch.cat([scene[k], extra[k]]) for k in scene}


def leaf_params(params):
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def grads_of(images, alphas, params, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weights_c = torch.rand(images.shape, generator=gen, dtype=images.dtype)
    weights_a = torch.rand(alphas.shape, generator=gen, dtype=alphas.dtype)
    loss = (images * weights_c).sum() + (alphas * weights_a).sum()
    return torch.autograd.grad(loss, [params[k] for k in PARAM_NAMES])


def render(params, viewmats, Ks, width, height, **kwargs):
    return torch_rasterization(params["means"], params["quats"], params["scales"], params["opacities"],
                               params["colors"], viewmats, Ks, width, height, **kwargs)


# ----------------------------------------------------------------------------------------------------
# gsplat's private helpers that patchsplat depends on (pinned behaviour)
# ----------------------------------------------------------------------------------------------------

def test_gsplat_spherical_harmonics_is_the_real_sh_basis():
    coeffs = torch.randn(5, 4, 3, dtype=torch.float64)
    dirs = torch.randn(5, 3, dtype=torch.float64)
    unit = dirs / dirs.norm(dim=-1, keepdim=True)
    c0, c1 = 0.28209479177387814, 0.4886025119029199
    x, y, z = unit.unbind(-1)
    expected = c0 * coeffs[:, 0] - c1 * y[:, None] * coeffs[:, 1] + c1 * z[:, None] * coeffs[:, 2] - c1 * x[:, None] * coeffs[:, 3]
    torch.testing.assert_close(gsplat_ops.spherical_harmonics(1, dirs, coeffs), expected)
    torch.testing.assert_close(gsplat_ops.spherical_harmonics(0, dirs, coeffs), c0 * coeffs[:, 0])


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_spherical_harmonics_match_gsplat_in_values_and_gradients(degree):
    from patchsplat.render.sh import spherical_harmonics

    gen = torch.Generator().manual_seed(degree)
    dirs = torch.randn(2, 40, 3, generator=gen, dtype=torch.float64)
    coeffs = torch.randn(2, 40, 25, 3, generator=gen, dtype=torch.float64)
    ours_in, theirs_in = leaf_params({"d": dirs, "c": coeffs}), leaf_params({"d": dirs, "c": coeffs})
    ours = spherical_harmonics(degree, ours_in["d"], ours_in["c"])
    theirs = gsplat_ops.spherical_harmonics(degree, theirs_in["d"], theirs_in["c"])
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)
    weights = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    torch.testing.assert_close(ours_in["d"].grad, theirs_in["d"].grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ours_in["c"].grad, theirs_in["c"].grad, atol=1e-12, rtol=1e-10)


def test_gsplat_reference_covariance_and_projection_of_a_known_gaussian():
    quat = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]], dtype=torch.float64) * 3.0
    scales = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    # 90 degrees about z swaps the x and y variances.
    torch.testing.assert_close(gsplat_ops.reference_covariances(quat, scales)[0],
                               torch.diag(torch.tensor([0.04, 0.01, 0.09], dtype=torch.float64)))
    means = torch.tensor([[0.2, -0.1, 2.0]], dtype=torch.float64)
    K = torch.tensor([[[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]]], dtype=torch.float64)
    radii, means2d, depths, conics = gsplat_ops.reference_projection(
        means, quat, scales, torch.eye(4, dtype=torch.float64)[None], K, 64, 48)
    torch.testing.assert_close(means2d[0, 0], torch.tensor([42.0, 19.0], dtype=torch.float64))
    assert depths[0, 0].item() == 2.0 and radii.dtype == torch.int32 and conics.shape == (1, 1, 3)


def test_projection_matches_gsplat_reference():
    params, viewmats, Ks, width, height = random_scene(200, seed=1, n_cameras=3)
    proj = project_gaussians(params["means"], params["quats"], params["scales"], params["opacities"], viewmats, Ks, width, height)
    ref_radii, ref_means2d, ref_depths, ref_conics = gsplat_ops.reference_projection(
        params["means"], params["quats"], params["scales"], viewmats, Ks, width, height)
    visible = proj.visible
    assert visible.sum() > 100
    # gsplat's pure-torch reference has no opacity-aware extent, so it culls a subset of ours.
    assert not (visible & ~(ref_radii > 0).all(-1)).any()
    torch.testing.assert_close(proj.means2d[visible], ref_means2d[visible])
    torch.testing.assert_close(proj.depths[visible], ref_depths[visible])
    torch.testing.assert_close(proj.conics[visible], ref_conics[visible])
    # Radii: ceil(extend * sqrt(cov diag)) with extend = min(3.33, sqrt(2 ln(255 opacity))).
    cov_xx = ref_conics[..., 2] / (ref_conics[..., 0] * ref_conics[..., 2] - ref_conics[..., 1] ** 2)
    extend = torch.sqrt(2 * torch.log(params["opacities"] * 255)).clamp(max=3.33)
    torch.testing.assert_close(proj.radii[..., 0][visible].double(), torch.ceil(extend * cov_xx.sqrt())[visible])
    assert proj.radii.dtype == torch.int32 and (proj.radii[~visible] == 0).all()


# ----------------------------------------------------------------------------------------------------
# Against the dense reference
# ----------------------------------------------------------------------------------------------------

def _native_or_skip():
    from patchsplat.render import native

    if native.load() is None:
        pytest.skip("the native CPU kernels did not build here (python -m patchsplat.render.native says why)")


def test_the_native_build_is_kept_where_a_new_process_looks_for_it():
    """A second process imports the finished build from build_dir() instead of building again (torch's builder
    once changed the flag lists the folder's key is made of, so each process built afresh)."""
    from patchsplat.render import native

    _native_or_skip()
    assert (native.build_dir() / f"{native.NAME}.so").is_file()


# Both sets of kernels (projection, SH colours, compositing): the native C++ ones (the default on a CPU) and the
# pure-torch fallback.
KERNELS = [pytest.param("native", id="native"), pytest.param("torch", id="torch")]


@pytest.fixture(params=KERNELS)
def kernels(request):
    if request.param == "native":
        _native_or_skip()
    return request.param


@pytest.mark.parametrize("seed, n, tile_size, opacity_range", [
    (0, 40, 8, (0.05, 0.95)),
    (1, 60, 16, (0.3, 1.0)),        # + add_opaque_stack: the 1e-4 stop and the 0.999 clamp
    (2, 50, 4, (0.01, 0.6)),
])
def test_matches_dense_reference_images_and_gradients(seed, n, tile_size, opacity_range, kernels):
    scene, viewmats, Ks, width, height = random_scene(n, seed, n_cameras=2, opacity_range=opacity_range)
    opaque = opacity_range[1] == 1.0
    if opaque:
        scene = add_opaque_stack(scene, viewmats[0], Ks[0])
    backgrounds = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 0.3]], dtype=torch.float64)
    p_test, p_ref = leaf_params(scene), leaf_params(scene)
    images, alphas, _ = render(p_test, viewmats, Ks, width, height, tile_size=tile_size, backgrounds=backgrounds,
                               kernels=kernels)
    ref_images, ref_alphas = dense_reference(*(p_ref[k] for k in PARAM_NAMES), viewmats, Ks, width, height, backgrounds=backgrounds)
    assert ref_alphas.max() > 0.5
    if opaque:                                        # the stop and the clamp are exercised
        assert (1 - ref_alphas).min() < 2e-4 and (ref_alphas > 0.998).sum() > 4
    torch.testing.assert_close(images, ref_images, atol=1e-10, rtol=0)
    torch.testing.assert_close(alphas, ref_alphas, atol=1e-10, rtol=0)
    for name, grad, ref_grad in zip(PARAM_NAMES, grads_of(images, alphas, p_test), grads_of(ref_images, ref_alphas, p_ref)):
        assert ref_grad.abs().max() > 0, name
        torch.testing.assert_close(grad, ref_grad, atol=1e-9 * ref_grad.abs().max().item(), rtol=1e-7, msg=name)


def test_float32_matches_float64_dense_reference(kernels):
    scene, viewmats, Ks, width, height = random_scene(50, seed=3)
    ref_images, ref_alphas = dense_reference(*(scene[k] for k in PARAM_NAMES), viewmats, Ks, width, height)
    scene32 = {k: v.float() for k, v in scene.items()}
    images, alphas, _ = render(scene32, viewmats.float(), Ks.float(), width, height, kernels=kernels)
    assert (images.double() - ref_images).abs().max() < 1e-5
    assert (alphas.double() - ref_alphas).abs().max() < 1e-5


def test_gradcheck_on_a_tiny_scene(kernels):
    scene, viewmats, Ks, width, height = random_scene(3, seed=4, width=10, height=8, opacity_range=(0.2, 0.8))
    scene["scales"] = scene["scales"] + 0.15         # large enough to cover several of the 80 pixels
    inputs = {k: scene[k].clone().requires_grad_(True) for k in PARAM_NAMES}

    def render_with(**changed):
        def fn(*tensors):
            args = dict(inputs, **dict(zip(changed, tensors)))
            images, alphas, _ = torch_rasterization(*(args[k] for k in PARAM_NAMES), viewmats, Ks, width, height, tile_size=4,
                                                    kernels=kernels)
            return images, alphas
        return fn, tuple(inputs[k] for k in changed)

    # Full Jacobians for opacities, colours and means; a random projection (fast mode) for the rest.
    fn, args = render_with(opacities=None, colors=None, means=None)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)
    fn, args = render_with(quats=None, scales=None)
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("sh_degree", [None, 3])
def test_native_and_torch_kernels_agree_on_a_scene_like_cloud_in_float32(sh_degree):
    """The demo's size and precision (float32, 160 x 120, thousands of overlapping Gaussians, RGB + depth, colours
    or SH coefficients), where the two sets of kernels round differently but must give the same images and
    gradients to float32 accuracy."""
    from patchsplat.render.scenes import scene_camera, scene_like_gaussians

    _native_or_skip()
    viewmats, Ks = scene_camera(160, 120)
    cloud = scene_like_gaussians(8000, seed=1)
    if sh_degree is not None:
        rest = torch.randn(8000, 15, 3, generator=torch.Generator().manual_seed(5)) * 0.1
        cloud["colors"] = torch.cat([(cloud["colors"][:, None] - 0.5) / 0.2820947917738781, rest], dim=1)
    results = {}
    for name in ("native", "torch"):
        p = leaf_params(cloud)
        images, alphas, meta = render(p, viewmats, Ks, 160, 120, render_mode="RGB+ED", absgrad=True, kernels=name,
                                      sh_degree=sh_degree)
        meta["means2d"].retain_grad()
        gradients = grads_of(images, alphas, p)
        results[name] = (images, alphas, gradients, meta["means2d"].absgrad)
    native_out, torch_out = results["native"], results["torch"]
    assert torch_out[1].max() > 0.9                  # opaque somewhere: the stop and long lists are exercised
    torch.testing.assert_close(native_out[0], torch_out[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(native_out[1], torch_out[1], atol=1e-5, rtol=0)
    for name, ours, theirs in zip(PARAM_NAMES, native_out[2], torch_out[2]):
        relative = (ours - theirs).norm() / theirs.norm()
        assert relative < 1e-4, (name, relative.item())
    assert ((native_out[3] - torch_out[3]).norm() / torch_out[3].norm()) < 1e-4


def test_native_compositor_gives_the_same_bits_at_any_thread_count():
    """Each overlap's gradients come from one thread (every overlap belongs to one tile) and each row's sum over its
    overlaps from one thread in a fixed order, so what the native loop returns does not depend on how the tiles and
    rows are shared among threads (the compositor alone: torch's own scatter ops elsewhere in the backward pass are
    made repeatable by train.deterministic instead)."""
    from patchsplat.render import native
    from patchsplat.render.projection import project_gaussians
    from patchsplat.render.scenes import scene_camera, scene_like_gaussians
    from patchsplat.render.tiles import intersect_tiles

    _native_or_skip()
    viewmats, Ks = scene_camera(96, 72)
    cloud = scene_like_gaussians(3000, seed=2)
    with torch.no_grad():
        proj = project_gaussians(cloud["means"], cloud["quats"], cloud["scales"], cloud["opacities"], viewmats, Ks, 96, 72)
    tiles = intersect_tiles(proj.means2d, proj.radii, proj.depths, 96, 72, 8)
    rows = (proj.means2d.reshape(-1, 2).contiguous(), proj.conics.reshape(-1, 3).contiguous(),
            cloud["opacities"].contiguous(), cloud["colors"].contiguous())
    lists = (tiles.flatten_ids, tiles.isect_offsets.reshape(-1), tiles.tile_counts, 8, tiles.tile_width,
             tiles.tile_height)
    grouping = (tiles.grouped_position, tiles.group_rows, tiles.group_starts)
    module = native.load()
    n_tiles = tiles.tile_counts.numel()
    gen = torch.Generator().manual_seed(3)
    grad_color, grad_t = torch.rand(n_tiles, 64, 3, generator=gen), torch.rand(n_tiles, 64, generator=gen)
    threads = torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            forward = module.composite_forward(*rows, *lists)
            outputs.append([*forward, *module.composite_backward(*rows, *lists, forward[1], forward[2], grad_color,
                                                                 grad_t, True, *grouping)])
    finally:
        torch.set_num_threads(threads)
    assert all(outputs[0][i].abs().max() > 0 for i in range(3, 8))
    for other in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0], other))


def _tile_list_cases():
    """(means2d, radii, depths, width, height) of 3 cameras with culled rows and Gaussians past the image's edges, and
    of a scene-like cloud large enough that the C++ version sorts and places the overlaps in several parts."""
    params, viewmats, Ks, width, height = random_scene(400, seed=4, n_cameras=3, width=70, height=45)
    params["means"][:10, 2] = -3.0                                   # behind the cameras: culled
    params["means"][10:30, 0] = torch.linspace(-3.0, 3.0, 20, dtype=torch.float64)   # across and past the edges
    cloud = scene_like_gaussians(20000, seed=3)
    scene_view = scene_camera(160, 120)
    for p, (views, Ks), size in ((params, (viewmats, Ks), (width, height)), (cloud, scene_view, (160, 120))):
        with torch.no_grad():
            proj = project_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], views, Ks, *size)
        yield proj.means2d, proj.radii, proj.depths, *size


@pytest.mark.parametrize("tile_size", [8, 16])
def test_native_tile_lists_are_the_torch_ones_element_for_element(tile_size):
    """The C++ intersection gives exactly the torch one's lists (order by camera, tile, depth, index; the row grouping
    the compositor's backward pass reads) at any thread count, whether it works in one part or several."""
    from patchsplat.render.tiles import intersect_tiles

    _native_or_skip()
    threads = torch.get_num_threads()
    try:
        for means2d, radii, depths, width, height in _tile_list_cases():
            assert (radii == 0).any() and (radii > 0).any()
            reference = intersect_tiles(means2d, radii, depths, width, height, tile_size, kernels="torch")
            for count in (1, 2, 3):
                torch.set_num_threads(count)
                ours = intersect_tiles(means2d, radii, depths, width, height, tile_size, kernels="native")
                for field in ("tiles_per_gauss", "flatten_ids", "tile_keys", "isect_offsets", "tile_counts",
                              "grouped_position", "group_rows", "group_starts"):
                    assert torch.equal(getattr(ours, field), getattr(reference, field)), field
                assert (ours.tile_width, ours.tile_height) == (reference.tile_width, reference.tile_height)
            torch.set_num_threads(threads)
    finally:
        torch.set_num_threads(threads)


def _projection_scene(dtype):
    """random_scene's Gaussians in 3 cameras plus the cases the projection treats apart: behind the camera, beyond
    the far plane, outside the view (the Jacobian's clamp at 1.3x the field of view), an opacity below 1/255, a
    degenerate (zero-norm) quaternion's neighbour and the opaque stack."""
    params, viewmats, Ks, width, height = random_scene(300, seed=1, n_cameras=3)
    params = add_opaque_stack(params, viewmats[0], Ks[0])
    params["means"][:4, 2] = -3.0                                   # behind cameras 0-2 (they look along +z)
    params["means"][4:12, 0] = torch.linspace(-2.5, 2.5, 8, dtype=torch.float64)   # past the sides: clamped J
    params["opacities"][12] = 0.002
    params["quats"][13] = torch.tensor([1e-3, 0.0, 0.0, 0.0], dtype=torch.float64)
    return {k: v.to(dtype) for k, v in params.items()}, viewmats.to(dtype), Ks.to(dtype), width, height


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_native_projection_matches_the_torch_one_in_values_and_gradients(dtype, tolerance):
    from patchsplat.render.projection import project_gaussians

    _native_or_skip()
    scene, viewmats, Ks, width, height = _projection_scene(dtype)
    results = {}
    for name in ("native", "torch"):
        p = leaf_params(scene)
        proj = project_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], viewmats, Ks, width, height,
                                 kernels=name)
        gen = torch.Generator().manual_seed(3)
        loss = sum((out * torch.rand(out.shape, generator=gen, dtype=dtype)).sum()
                   for out in (proj.means2d, proj.depths, proj.conics))
        loss.backward()
        results[name] = (proj, [p[k].grad for k in ("means", "quats", "scales")])
    (ours, our_grads), (theirs, their_grads) = results["native"], results["torch"]
    assert torch.equal(ours.radii, theirs.radii)
    visible = theirs.visible
    assert 300 < visible.sum() < visible.numel() and not visible[:, :4].any() and visible[:, 4:12].any()
    for name in ("means2d", "depths", "conics"):
        expected = getattr(theirs, name)
        torch.testing.assert_close(getattr(ours, name), expected, atol=tolerance * expected.abs().max().item(), rtol=0)
    for name, grad, expected in zip(("means", "quats", "scales"), our_grads, their_grads):
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(grad, expected, atol=tolerance * expected.abs().max().item(), rtol=0, msg=name)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_native_sh_colours_match_the_torch_ones_in_values_and_gradients(degree):
    """Values, and gradients w.r.t. the coefficients and the means (through the view direction), where the +0.5
    offset and the clamp at 0 are both exercised."""
    from patchsplat.render.sh import view_colours

    _native_or_skip()
    gen = torch.Generator().manual_seed(degree)
    means = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    coeffs = torch.randn(200, 25, 3, generator=gen, dtype=torch.float64) * 2.0
    centres = torch.randn(3, 3, generator=gen, dtype=torch.float64) * 4
    weights = torch.randn(3, 200, 3, generator=gen, dtype=torch.float64)
    results = {}
    for name in ("native", "torch"):
        p = leaf_params({"means": means, "coeffs": coeffs})
        colours = view_colours(degree, p["means"], p["coeffs"][:, :1], p["coeffs"][:, 1:], centres, kernels=name)
        (colours * weights).sum().backward()
        mean_grad = p["means"].grad if p["means"].grad is not None else torch.zeros_like(means)
        results[name] = (colours, mean_grad, p["coeffs"].grad)
    (colours, mean_grad, coeff_grad), (expected, expected_mean_grad, expected_coeff_grad) = results["native"], results["torch"]
    assert (expected == 0).any() and (expected > 0).any()           # some colours clamped, some not
    torch.testing.assert_close(colours, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(coeff_grad, expected_coeff_grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(mean_grad, expected_mean_grad, atol=1e-12 * max(1.0, expected_mean_grad.abs().max().item()), rtol=0)
    assert (expected_mean_grad.abs().max() > 0) == (degree > 0)


def test_native_projection_and_sh_give_the_same_bits_at_any_thread_count():
    """Each Gaussian's gradients are summed over the cameras by the thread that owns it: no order depends on how
    the Gaussians are shared among threads."""
    from patchsplat.render.projection import project_gaussians
    from patchsplat.render.sh import view_colours

    _native_or_skip()
    scene, viewmats, Ks, width, height = _projection_scene(torch.float32)
    coeffs = torch.randn(scene["means"].shape[0], 16, 3, generator=torch.Generator().manual_seed(1))
    centres = torch.inverse(viewmats)[:, :3, 3]
    threads = torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            p = leaf_params({**scene, "coeffs": coeffs})
            proj = project_gaussians(p["means"], p["quats"], p["scales"], p["opacities"], viewmats, Ks, width, height,
                                     kernels="native")
            colours = view_colours(3, p["means"], p["coeffs"][:, :1], p["coeffs"][:, 1:], centres, kernels="native")
            (proj.means2d.sum() + proj.conics.square().sum() + proj.depths.sum() + colours.square().sum()).backward()
            outputs.append([proj.means2d, proj.conics, colours] + [p[k].grad for k in ("means", "quats", "scales", "coeffs")])
    finally:
        torch.set_num_threads(threads)
    for other in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0], other))


def test_chunking_does_not_change_results():
    scene, viewmats, Ks, width, height = random_scene(80, seed=5, opacity_range=(0.2, 1.0))
    p_small, p_default = leaf_params(scene), leaf_params(scene)
    small = render(p_small, viewmats, Ks, width, height, chunk_elements=256, kernels="torch")  # many chunks
    default = render(p_default, viewmats, Ks, width, height, kernels="torch")
    torch.testing.assert_close(small[0], default[0], atol=1e-12, rtol=0)
    for a, b in zip(grads_of(small[0], small[1], p_small), grads_of(default[0], default[1], p_default)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9)


# ----------------------------------------------------------------------------------------------------
# Behaviour
# ----------------------------------------------------------------------------------------------------

def single_gaussian(mean, color=(1.0, 0.5, 0.25), opacity=0.9, scale=0.05):
    return {
        "means": torch.tensor([mean], dtype=torch.float64),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64),
        "scales": torch.full((1, 3), scale, dtype=torch.float64),
        "opacities": torch.tensor([opacity], dtype=torch.float64),
        "colors": torch.tensor([color], dtype=torch.float64),
    }


IDENTITY = torch.eye(4, dtype=torch.float64)[None]
K64 = torch.tensor([[[80.0, 0.0, 32.0], [0.0, 80.0, 24.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)


def test_single_gaussian_peaks_at_its_projection_with_its_colour():
    g = single_gaussian((0.2, -0.1, 2.0))           # projects to (80*0.1 + 32, 80*-0.05 + 24) = (40, 20)
    images, alphas, meta = render(g, IDENTITY, K64, 64, 48)
    peak = torch.nonzero(alphas[0, ..., 0] == alphas.max())[0].tolist()
    assert peak in ([19, 39], [19, 40], [20, 39], [20, 40])        # pixels around the point (40, 20)
    torch.testing.assert_close(meta["means2d"][0, 0], torch.tensor([40.0, 20.0], dtype=torch.float64))
    assert meta["depths"][0, 0].item() == pytest.approx(2.0)
    y, x = peak
    torch.testing.assert_close(images[0, y, x] / alphas[0, y, x], torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
    assert alphas[0, y, x, 0] > 0.8


def test_gaussian_behind_the_camera_contributes_nothing():
    g = leaf_params(single_gaussian((0.0, 0.0, -2.0), scale=0.5))
    images, alphas, meta = render(g, IDENTITY, K64, 64, 48)
    assert images.abs().max() == 0 and alphas.abs().max() == 0
    assert (meta["radii"] == 0).all()
    grads = torch.autograd.grad(images.sum() + alphas.sum(), [g[k] for k in PARAM_NAMES], allow_unused=True)
    assert all(gr is None or (torch.isfinite(gr).all() and gr.abs().max() == 0) for gr in grads)


def test_depth_sorting_near_red_hides_far_blue_whatever_the_order():
    red, blue = single_gaussian((0.0, 0.0, 2.0), (1.0, 0.0, 0.0), 0.99, 0.2), single_gaussian((0.0, 0.0, 4.0), (0.0, 0.0, 1.0), 0.99, 0.4)
    for first, second in ((red, blue), (blue, red)):
        both = {k: torch.cat([first[k], second[k]]) for k in PARAM_NAMES}
        images, _, _ = render(both, IDENTITY, K64, 64, 48)
        centre = images[0, 24, 32]
        assert centre[0] > 0.95 and centre[2] < 0.05


def test_background_where_nothing_is():
    g = single_gaussian((0.3, 0.2, 2.0))
    background = torch.tensor([[0.2, 0.4, 0.6]], dtype=torch.float64)
    images, alphas, _ = render(g, IDENTITY, K64, 64, 48, backgrounds=background)
    torch.testing.assert_close(images[0, 0, 0], background[0])
    assert alphas[0, 0, 0, 0] == 0


def test_expected_depth_of_an_opaque_gaussian_is_its_camera_depth():
    g = single_gaussian((0.0, 0.0, 3.0), opacity=0.99, scale=0.3)
    depth, alphas, _ = render(g, IDENTITY, K64, 64, 48, render_mode="ED")
    assert depth.shape == (1, 48, 64, 1)
    torch.testing.assert_close(depth[0, 24, 32, 0], torch.tensor(3.0, dtype=torch.float64))
    accumulated, _, _ = render(g, IDENTITY, K64, 64, 48, render_mode="D")
    torch.testing.assert_close(accumulated, alphas * 3.0)
    both, _, _ = render(g, IDENTITY, K64, 64, 48, render_mode="RGB+ED", backgrounds=torch.ones(1, 3, dtype=torch.float64))
    assert both.shape == (1, 48, 64, 4)
    torch.testing.assert_close(both[..., 3], depth[..., 0])


def test_sh_degree_0_equals_rgb():
    scene, viewmats, Ks, width, height = random_scene(30, seed=6, n_cameras=2)
    rgb, _, _ = render(scene, viewmats, Ks, width, height)
    sh = dict(scene)
    sh["colors"] = torch.cat([((scene["colors"] - 0.5) / 0.28209479177387814)[:, None, :],
                              torch.randn(30, 3, 3, dtype=torch.float64)], dim=1)    # higher bands unused
    from_sh, _, _ = render(sh, viewmats, Ks, width, height, sh_degree=0)
    torch.testing.assert_close(from_sh, rgb, atol=1e-12, rtol=0)
    render(sh, viewmats, Ks, width, height, sh_degree=1)                             # and degree 1 runs


def test_tile_size_does_not_change_the_image():
    scene, viewmats, Ks, width, height = random_scene(60, seed=7, width=37, height=29)
    reference, _, _ = render(scene, viewmats, Ks, width, height, tile_size=16)
    for tile_size in (1, 4, 8, 13):
        images, _, meta = render(scene, viewmats, Ks, width, height, tile_size=tile_size)
        torch.testing.assert_close(images, reference, atol=1e-12, rtol=0)
        assert meta["tile_size"] == tile_size and meta["tile_width"] == math.ceil(37 / tile_size)


def test_cameras_render_independently_and_per_camera_colours():
    scene, viewmats, Ks, width, height = random_scene(40, seed=8, n_cameras=3)
    together, _, meta = render(scene, viewmats, Ks, width, height)
    for c in range(3):
        alone, _, _ = render(scene, viewmats[c:c + 1], Ks[c:c + 1], width, height)
        torch.testing.assert_close(together[c:c + 1], alone)
    per_camera = dict(scene, colors=scene["colors"][None].expand(3, 40, 3))
    torch.testing.assert_close(render(per_camera, viewmats, Ks, width, height)[0], together)
    assert meta["n_cameras"] == 3 and meta["radii"].shape == (3, 40, 2)


def test_meta_carries_what_gsplat_strategies_read():
    scene, viewmats, Ks, width, height = random_scene(30, seed=9, dtype=torch.float32, n_cameras=2)
    p = leaf_params(scene)
    out = rasterize(*(p[k] for k in PARAM_NAMES), viewmats, Ks, width, height, backend="torch")
    assert isinstance(out, RenderOutput) and out.meta["backend"] == "torch"
    meta = out.meta
    assert meta["radii"].shape == (2, 30, 2) and meta["radii"].dtype == torch.int32
    assert meta["means2d"].shape == (2, 30, 2) and meta["means2d"].grad_fn is not None
    assert meta["depths"].shape == (2, 30) and meta["conics"].shape == (2, 30, 3)
    assert meta["gaussian_ids"] is None and meta["width"] == width and meta["height"] == height
    assert meta["n_cameras"] == 2
    meta["means2d"].retain_grad()
    out.colors.sum().backward()
    assert meta["means2d"].grad.shape == (2, 30, 2) and meta["means2d"].grad.abs().sum() > 0


def test_absgrad_is_the_sum_over_pixels_of_absolute_per_pixel_gradients(kernels):
    scene, viewmats, Ks, width, height = random_scene(6, seed=10, width=10, height=8)
    scene["scales"] = scene["scales"] + 0.1
    p = leaf_params(scene)
    images, alphas, meta = render(p, viewmats, Ks, width, height, absgrad=True, kernels=kernels)
    meta["means2d"].retain_grad()
    images.sum().backward()
    expected = torch.zeros_like(meta["means2d"])
    for y in range(height):
        for x in range(width):
            q = leaf_params(scene)
            im, _, m = render(q, viewmats, Ks, width, height)
            m["means2d"].retain_grad()
            im[0, y, x].sum().backward()
            expected += m["means2d"].grad.abs()
    assert expected.abs().max() > 0
    torch.testing.assert_close(meta["means2d"].absgrad, expected, atol=1e-10, rtol=1e-8)


def test_select_backend_on_this_machine():
    assert select_backend("torch") == "torch"
    with pytest.raises(ValueError):
        select_backend("cuda")
    if not torch.cuda.is_available():
        assert select_backend("auto") == "torch"
        with pytest.raises(RuntimeError, match="needs CUDA"):
            select_backend("gsplat")
        g = single_gaussian((0.0, 0.0, 2.0))
        with pytest.raises(RuntimeError, match="needs CUDA"):
            rasterize(*(g[k] for k in PARAM_NAMES), IDENTITY, K64, 64, 48, backend="gsplat")
    assert select_backend("auto", device="cpu") == "torch"


def test_bad_shapes_are_rejected_with_a_message():
    g = single_gaussian((0.0, 0.0, 2.0))
    with pytest.raises(ValueError, match="render_mode"):
        render(g, IDENTITY, K64, 64, 48, render_mode="RGBD")
    with pytest.raises(ValueError, match="colors"):
        render(dict(g, colors=torch.ones(1, 4, 3, dtype=torch.float64)), IDENTITY, K64, 64, 48)
    with pytest.raises(ValueError, match="sh_degree"):
        render(dict(g, colors=torch.ones(1, 1, 3, dtype=torch.float64)), IDENTITY, K64, 64, 48, sh_degree=1)


# ----------------------------------------------------------------------------------------------------
# gsplat's DefaultStrategy on CPU with this backend
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("absgrad", [False, True])
def test_default_strategy_densifies_with_the_torch_backend(absgrad):
    from gsplat.strategy import DefaultStrategy

    torch.manual_seed(0)
    width, height = 40, 30
    viewmats, Ks = scene_camera(width, height)
    target_scene = scene_like_gaussians(400, seed=1)
    with torch.no_grad():
        target, _, _ = rasterize(*(target_scene[k] for k in PARAM_NAMES), viewmats, Ks, width, height, backend="torch")
    init = scene_like_gaussians(150, seed=2)
    params = torch.nn.ParameterDict({
        "means": init["means"], "quats": init["quats"], "scales": torch.log(init["scales"] * 3),
        "opacities": torch.logit(init["opacities"]), "colors": init["colors"],
    })
    lrs = {"means": 1e-3, "quats": 1e-3, "scales": 5e-3, "opacities": 5e-2, "colors": 2.5e-3}
    optimizers = {k: torch.optim.Adam([params[k]], lr=lr, eps=1e-15) for k, lr in lrs.items()}
    strategy = DefaultStrategy(refine_start_iter=2, refine_every=3, refine_stop_iter=100, reset_every=1000,
                               grow_grad2d=1e-7, prune_opa=0.001, absgrad=absgrad, verbose=False)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    counts = []
    for step in range(8):
        images, _, info = rasterize(params["means"], params["quats"], torch.exp(params["scales"]),
                                    torch.sigmoid(params["opacities"]), params["colors"], viewmats, Ks,
                                    width, height, backend="torch", absgrad=absgrad)
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = (images - target).abs().mean()
        loss.backward()
        strategy.step_post_backward(params, optimizers, state, step, info)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        counts.append(len(params["means"]))
        assert torch.isfinite(loss)
    assert counts[-1] > counts[0], counts


# ----------------------------------------------------------------------------------------------------
# GPU only: the torch backend against gsplat's CUDA kernels
# ----------------------------------------------------------------------------------------------------

def _gpu_scene():
    scene = {k: v.cuda() for k, v in scene_like_gaussians(3000, seed=3).items()}
    viewmats, Ks = scene_camera(160, 120)
    return scene, viewmats.cuda(), Ks.cuda(), 160, 120


@pytest.mark.gpu
@needs_cuda
def test_gpu_torch_backend_matches_gsplat_images():
    scene, viewmats, Ks, width, height = _gpu_scene()
    background = torch.tensor([[0.1, 0.2, 0.3]], device="cuda")
    for mode in ("RGB", "RGB+ED"):
        ours = rasterize(*(scene[k] for k in PARAM_NAMES), viewmats, Ks, width, height, backend="torch",
                         render_mode=mode, backgrounds=background)
        theirs = rasterize(*(scene[k] for k in PARAM_NAMES), viewmats, Ks, width, height, backend="gsplat",
                           render_mode=mode, backgrounds=background)
        assert theirs.meta["backend"] == "gsplat"
        assert (ours.colors[..., :3].clamp(0, 1) - theirs.colors[..., :3].clamp(0, 1)).abs().max() < 1e-3
        assert (ours.alphas - theirs.alphas).abs().max() < 1e-3
        # Same culling, up to float32 rounding at the image border and in ceil().
        ours_visible, theirs_visible = (ours.meta["radii"] > 0).all(-1), (theirs.meta["radii"] > 0).all(-1)
        assert (ours_visible != theirs_visible).float().mean() < 5e-3
        both = ours_visible & theirs_visible
        assert (ours.meta["radii"][both] - theirs.meta["radii"][both]).abs().max() <= 1


@pytest.mark.gpu
@needs_cuda
def test_gpu_torch_backend_matches_gsplat_gradients():
    scene, viewmats, Ks, width, height = _gpu_scene()
    target = torch.rand(1, height, width, 3, device="cuda")
    grads = {}
    for backend in ("torch", "gsplat"):
        p = leaf_params(scene)
        images, _, meta = rasterize(*(p[k] for k in PARAM_NAMES), viewmats, Ks, width, height, backend=backend)
        meta["means2d"].retain_grad()
        ((images - target) ** 2).mean().backward()
        grads[backend] = [p[k].grad for k in PARAM_NAMES] + [meta["means2d"].grad]
    for name, ours, theirs in zip(PARAM_NAMES + ("means2d",), grads["torch"], grads["gsplat"]):
        relative = (ours - theirs).norm() / theirs.norm().clamp_min(1e-12)
        assert relative < 1e-2, (name, relative.item())


def test_gradients_are_the_same_bit_for_bit_every_run_at_the_default_thread_count():
    """What makes training with train.deterministic (the default) repeatable on the CPU: the backward pass's
    indexed scatter-adds. Without torch's deterministic algorithms, two or more threads add into the same
    gradients in a varying order and these gradients differed on every repetition (measured at this size)."""
    from patchsplat.train.loop import deterministic_algorithms

    scene, viewmats, Ks, width, height = random_scene(1500, seed=11, dtype=torch.float32, width=96, height=72)

    def gradients() -> list[torch.Tensor]:
        p = leaf_params(scene)
        images = rasterize(*(p[k] for k in PARAM_NAMES), viewmats, Ks, width, height, backend="torch")[0]
        images.square().sum().backward()
        return [p[k].grad.clone() for k in PARAM_NAMES]

    with deterministic_algorithms(True):
        first = gradients()
        for _ in range(3):
            assert all(torch.equal(a, b) for a, b in zip(first, gradients()))
