"""gsplat 1.5.3 strategies on CPU: the relocation formula, noise injection, MCMC growth, the opacity-reset fix."""

from __future__ import annotations

import math

import gsplat.strategy.ops as gsplat_ops
import pytest
import torch
import torch.nn.functional as F
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from gsplat.strategy import DefaultStrategy, MCMCStrategy

from patchsplat.train.strategies import (
    CpuSafeMCMCStrategy,
    FixedDefaultStrategy,
    covar_torch,
    cpu_fallback_ops,
    enforce_cap,
    opacity_reset_due,
    relocation_torch,
)

BINOMS = MCMCStrategy().initialize_state()["binoms"]  # gsplat's own [51, 51] table


def relocation_closed_form(opacity: float, scale: float, n: int) -> tuple[float, float]:
    """Eq. 9 of the MCMC paper written independently: the double sum collapses (hockey stick,
    sum_{i=k+1..n} C(i-1, k) = C(n, k+1)) to sum_{j=1..n} C(n, j) (-1)^(j-1) o_new^j / sqrt(j)."""
    new_opacity = 1 - (1 - opacity) ** (1 / n)
    denominator = sum(math.comb(n, j) * (-1) ** (j - 1) * new_opacity**j / math.sqrt(j) for j in range(1, n + 1))
    return new_opacity, opacity / denominator * scale


# --------------------------------------------------------------------------------------------- relocation


def test_relocation_with_one_copy_leaves_the_gaussian_unchanged():
    opacities = torch.tensor([0.1, 0.5, 0.93])
    scales = torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0], [0.01, 0.02, 0.5]])
    new_opacities, new_scales = relocation_torch(opacities, scales, torch.ones(3, dtype=torch.int64), BINOMS)
    assert torch.allclose(new_opacities, opacities, atol=1e-7)
    assert torch.allclose(new_scales, scales, atol=1e-7)


def test_relocation_with_two_copies_matches_the_hand_derived_values():
    # n = 2, o = 0.75: o_new = 1 - sqrt(1 - 0.75) = 0.5.
    # D = [i=1: C(0,0) o_new] + [i=2: C(1,0) o_new - C(1,1) o_new^2 / sqrt(2)] = 2 * 0.5 - 0.25 / sqrt(2)
    # s_new = 0.75 / D * s
    denominator = 1.0 - 0.25 / math.sqrt(2.0)
    assert denominator == pytest.approx(0.8232233047)
    new_opacities, new_scales = relocation_torch(
        torch.tensor([0.75]), torch.tensor([[0.2, 0.4, 1.0]]), torch.tensor([2]), BINOMS
    )
    assert new_opacities.item() == pytest.approx(0.5, abs=1e-7)
    expected_scale = 0.75 / denominator
    assert torch.allclose(new_scales, torch.tensor([[0.2, 0.4, 1.0]]) * expected_scale, atol=1e-6)
    # 1 - sqrt(1 - o) in general.
    opacity = torch.tensor([0.3])
    assert relocation_torch(opacity, torch.ones(1, 3), torch.tensor([2]), BINOMS)[0].item() == pytest.approx(
        1 - math.sqrt(0.7), abs=1e-7
    )


def test_relocation_matches_the_independent_closed_form_for_every_copy_count():
    generator = torch.Generator().manual_seed(0)
    counts = torch.arange(1, 52)  # every n the table supports
    opacities = 0.02 + 0.96 * torch.rand(51, generator=generator, dtype=torch.float64)
    scales = torch.rand(51, 3, generator=generator, dtype=torch.float64) + 0.01
    new_opacities, new_scales = relocation_torch(opacities, scales, counts, BINOMS)
    assert new_opacities.dtype == torch.float64
    for index, n in enumerate(counts.tolist()):
        expected_opacity, _ = relocation_closed_form(opacities[index].item(), 1.0, n)
        assert new_opacities[index].item() == pytest.approx(expected_opacity, rel=1e-12)
        for axis in range(3):
            _, expected_scale = relocation_closed_form(opacities[index].item(), scales[index, axis].item(), n)
            assert new_scales[index, axis].item() == pytest.approx(expected_scale, rel=1e-6)


def test_relocation_follows_the_cuda_wrappers_argument_contract():
    opacities = torch.tensor([0.6, 0.6, 0.6, 0.6])
    scales = torch.ones(4, 3)
    ratios = torch.tensor([0, 1, 51, 500])  # clamped to [1, n_max = 51] as the wrapper does
    original = ratios.clone()
    new_opacities, new_scales = relocation_torch(opacities, scales, ratios, BINOMS)
    assert torch.equal(ratios, original)  # unlike the CUDA wrapper, the input is not clamped in place
    assert new_opacities.dtype == torch.float32 and new_scales.dtype == torch.float32
    assert new_opacities[0] == new_opacities[1] == pytest.approx(0.6)
    assert new_opacities[2] == new_opacities[3] == pytest.approx(1 - 0.4 ** (1 / 51))
    assert torch.equal(new_scales[2], new_scales[3])
    # Opacities given as [N, 1] come back as [N, 1] (the CUDA op returns empty_like(opacities)).
    column, _ = relocation_torch(opacities[:, None], scales, torch.tensor([2, 2, 2, 2]), BINOMS)
    assert column.shape == (4, 1)


# --------------------------------------------------------------------------------------------- covariances / noise


def test_covar_torch_matches_gsplats_torch_reference():
    generator = torch.Generator().manual_seed(1)
    quats = torch.randn(20, 4, generator=generator)
    scales = torch.rand(20, 3, generator=generator) + 0.05
    for triu in (False, True):
        ours = covar_torch(quats, scales, triu=triu)
        reference = _quat_scale_to_covar_preci(quats, scales, triu=triu)
        for mine, theirs in zip(ours, reference):
            assert torch.allclose(mine, theirs, atol=1e-5)
    covars, precis = covar_torch(quats, scales, compute_preci=False)
    assert precis is None
    assert torch.allclose(covars, covars.transpose(-1, -2))
    eye = covar_torch(torch.tensor([[1.0, 0, 0, 0]]), torch.tensor([[1.0, 2.0, 3.0]]), compute_preci=False)[0]
    assert torch.allclose(eye, torch.diag(torch.tensor([1.0, 4.0, 9.0]))[None])


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_the_native_position_noise_is_gsplats_from_the_same_draws(dtype, tolerance):
    """On a CPU the MCMC noise runs as one native pass (patchsplat.render.native); from the same random state it
    moves every Gaussian as gsplat's own torch code does, to rounding."""
    import gsplat.strategy.ops as ops

    from patchsplat.render import native
    from patchsplat.train.strategies import _inject_noise_any_device

    if native.load() is None:
        pytest.skip("the native CPU kernels did not build here (python -m patchsplat.render.native says why)")
    generator = torch.Generator().manual_seed(3)
    n = 700
    opacity = torch.rand(n, generator=generator, dtype=dtype) * 0.02          # some near 0: large noise
    opacity[::3] = 0.9                                                        # ... and some opaque: none
    params = {
        "means": torch.randn(n, 3, generator=generator, dtype=dtype),
        "quats": torch.randn(n, 4, generator=generator, dtype=dtype),
        "scales": torch.log(torch.rand(n, 3, generator=generator, dtype=dtype) * 0.2 + 0.01),
        "opacities": torch.logit(opacity),
    }
    ours, theirs = ({k: v.clone() for k, v in params.items()} for _ in range(2))
    torch.manual_seed(11)
    _inject_noise_any_device(ours, {}, {}, scaler=50.0)
    torch.manual_seed(11)
    with cpu_fallback_ops():
        ops.inject_noise_to_position(theirs, {}, {}, scaler=50.0)
    moved = (theirs["means"] - params["means"]).norm(dim=1)
    assert (moved[1::3] > 0).all() and (moved[::3] < moved[1::3].min()).all()
    torch.testing.assert_close(ours["means"], theirs["means"], atol=tolerance, rtol=tolerance)


def test_noise_injection_runs_on_cpu_and_moves_only_low_opacity_gaussians_by_a_bounded_amount():
    generator = torch.Generator().manual_seed(2)
    n = 200
    quats = torch.randn(n, 4, generator=generator)
    log_scales = torch.log(torch.rand(n, 3, generator=generator) * 0.05 + 0.01)
    opacity = torch.where(torch.arange(n) < 100, torch.tensor(0.001), torch.tensor(0.9))  # first half "dead"
    means = torch.randn(n, 3, generator=generator)
    params = {
        "means": torch.nn.Parameter(means.clone()),
        "scales": torch.nn.Parameter(log_scales),
        "quats": torch.nn.Parameter(quats),
        "opacities": torch.nn.Parameter(torch.logit(opacity)),
    }
    scaler = 1e-3 * 5e5  # means lr x MCMC's default noise_lr
    torch.manual_seed(11)
    with cpu_fallback_ops():
        gsplat_ops.inject_noise_to_position(params=params, optimizers={}, state={}, scaler=scaler)
    moved = params["means"].detach() - means

    # Recompute what the MCMC paper's noise must be: Sigma @ (z * sigmoid(100 (1 - o - 0.995)) * scaler).
    torch.manual_seed(11)
    z = torch.randn(n, 3)
    gate = torch.sigmoid(100 * ((1 - opacity) - 0.995))
    assert gate[0] > 0.5 and gate[-1] < 1e-30  # o = 0.001 moves, o = 0.9 is frozen
    covars = _quat_scale_to_covar_preci(quats, log_scales.exp(), compute_preci=False)[0]
    expected = torch.einsum("nij,nj->ni", covars, z * gate[:, None] * scaler)
    assert torch.allclose(moved, expected, atol=1e-5, rtol=1e-4)

    # Bounded: |displacement| <= largest covariance eigenvalue * |z| * scaler; live Gaussians stay put.
    largest_variance = log_scales.exp().max(dim=1).values ** 2
    bound = largest_variance * z.norm(dim=1) * scaler
    assert (moved.norm(dim=1) <= bound * (1 + 1e-4) + 1e-7).all()
    assert moved[:100].norm(dim=1).min() > 0
    assert moved[100:].abs().max() < 1e-12


def test_the_patch_is_contained_and_plain_gsplat_fails_on_cpu():
    original_relocation = gsplat_ops.compute_relocation
    original_covar = gsplat_ops.quat_scale_to_covar_preci
    with cpu_fallback_ops():
        with cpu_fallback_ops():  # reentrant
            assert gsplat_ops.compute_relocation is not original_relocation
        assert gsplat_ops.compute_relocation is not original_relocation
    assert gsplat_ops.compute_relocation is original_relocation
    assert gsplat_ops.quat_scale_to_covar_preci is original_covar
    with pytest.raises(RuntimeError, match="boom"), cpu_fallback_ops():
        raise RuntimeError("boom")
    assert gsplat_ops.compute_relocation is original_relocation
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may JIT-compile gsplat's kernels on first use; the CPU failure is not checked there")
    # Why the fallback exists: upstream's op cannot run on CPU tensors.
    with pytest.raises((ImportError, RuntimeError, OSError)):
        original_relocation(torch.rand(2), torch.rand(2, 3), torch.ones(2), BINOMS)


# --------------------------------------------------------------------------------------------- MCMC on a toy


def make_toy(n: int, n_dead: int, seed: int = 0):
    """Parameters, one Adam per parameter (gsplat's convention), and a differentiable toy loss."""
    generator = torch.Generator().manual_seed(seed)
    opacities = torch.randn(n, generator=generator) * 0.5
    opacities[:n_dead] = -8.0  # sigmoid(-8) = 3.4e-4 < min_opacity: dead
    params = torch.nn.ParameterDict(
        {
            "means": torch.randn(n, 3, generator=generator),
            "scales": torch.log(torch.rand(n, 3, generator=generator) * 0.05 + 0.02),
            "quats": torch.randn(n, 4, generator=generator),
            "opacities": opacities,
            "sh0": torch.rand(n, 1, 3, generator=generator),
            "shN": torch.zeros(n, 3, 3),
        }
    )
    lrs = {"means": 1e-3, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
    optimizers = {name: torch.optim.Adam([params[name]], lr=lr, eps=1e-15) for name, lr in lrs.items()}
    return params, optimizers


def toy_loss(params) -> torch.Tensor:
    """Any smooth function of every parameter: a stand-in for render + photometric loss."""
    weight = torch.sigmoid(params["opacities"]) * torch.exp(-params["means"].square().sum(-1))
    colour = (weight[:, None] * (params["sh0"][:, 0] + params["shN"].sum(1))).sum(0)
    size = (torch.exp(params["scales"]) * F.normalize(params["quats"], dim=-1)[:, :3].abs()).mean()
    return (colour - torch.tensor([3.0, 1.0, 2.0])).square().sum() + size


def test_cpu_safe_mcmc_relocates_dead_gaussians_and_grows_to_cap_max():
    torch.manual_seed(0)
    params, optimizers = make_toy(n=100, n_dead=10)
    strategy = CpuSafeMCMCStrategy(cap_max=120, refine_start_iter=2, refine_every=5, refine_stop_iter=1000)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()
    counts = []
    for step in range(30):
        info = {}  # MCMC in 1.5.3 reads nothing from the rasteriser's info
        strategy.step_pre_backward(params, optimizers, state, step, info)
        loss = toy_loss(params)
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if step == 5:
            before = params["means"].detach().clone()
            dead_before = torch.sigmoid(params["opacities"].detach()) <= strategy.min_opacity
            assert dead_before[:10].all() and dead_before.sum() == 10
        strategy.step_post_backward(params, optimizers, state, step, info, lr=1e-3)
        if step == 5:
            # Relocation: the 10 dead Gaussians now copy live ones (their means, up to the tiny noise
            # live Gaussians get), and 5 % new ones were added.
            opacities = torch.sigmoid(params["opacities"].detach())
            assert len(opacities) == 105
            assert (opacities[:10] > strategy.min_opacity).all()
            means = params["means"].detach()
            for index in range(10):
                distances = (means[10:100] - means[index]).norm(dim=1)
                assert distances.min() < 1e-5, index
            assert not torch.allclose(means[:10], before[:10])
        counts.append(len(params["means"]))
        for name, optimizer in optimizers.items():  # optimizer state follows the resized parameters
            assert optimizer.param_groups[0]["params"][0] is params[name]
            assert optimizer.state[params[name]]["exp_avg"].shape == params[name].shape
        assert all(torch.isfinite(p).all() for p in params.values())
    assert counts[4] == 100 and counts[5] == 105 and counts[10] == 110 and counts[15] == 115 and counts[20] == 120
    assert max(counts) == counts[-1] == 120
    assert gsplat_ops.compute_relocation.__module__ == "gsplat.relocation"  # patch removed afterwards


def test_enforce_cap_subsamples_only_above_the_cap():
    assert torch.equal(enforce_cap(5, 10), torch.arange(5))
    assert torch.equal(enforce_cap(10, 10), torch.arange(10))
    kept = enforce_cap(1000, 100, generator=torch.Generator().manual_seed(0))
    assert kept.shape == (100,) and kept.unique().numel() == 100
    assert torch.equal(kept, kept.sort().values) and kept.max() < 1000
    assert torch.equal(kept, enforce_cap(1000, 100, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError):
        enforce_cap(10, 0)


# --------------------------------------------------------------------------------------------- DefaultStrategy


def default_toy_step(params, optimizers, strategy, state, step):
    """One step with a fake rasteriser ``info`` holding what DefaultStrategy reads."""
    n = len(params["means"])
    means2d = params["means"][None, :, :2] * 20.0 + 32.0  # [C=1, N, 2], non-leaf like gsplat's
    info = {
        "width": 64,
        "height": 64,
        "n_cameras": 1,
        "radii": torch.full((1, n, 2), 3, dtype=torch.int32),
        "gaussian_ids": None,
        "means2d": means2d,
    }
    strategy.step_pre_backward(params, optimizers, state, step, info)
    loss = toy_loss(params) + (means2d - 32.0).square().mean()
    loss.backward()
    for optimizer in optimizers.values():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    strategy.step_post_backward(params, optimizers, state, step, info, packed=False)


def run_default(strategy_class, steps: int, **fields):
    torch.manual_seed(0)
    params, optimizers = make_toy(n=60, n_dead=0, seed=3)
    strategy = strategy_class(verbose=False, **fields)
    state = strategy.initialize_state(scene_scale=1.0)
    history = []
    for step in range(steps):
        default_toy_step(params, optimizers, strategy, state, step)
        history.append(params["opacities"].detach().clone())
    return params, optimizers, history


def test_opacity_reset_condition():
    assert [s for s in range(40) if opacity_reset_due(s, 10)] == [10, 20, 30]
    # The upstream expression, verbatim, never fires.
    reset_every = 10
    assert not any(s % reset_every == 0 & s > 0 for s in range(1000))


def test_fixed_default_strategy_resets_opacities_and_upstream_does_not():
    fields = dict(reset_every=10, refine_start_iter=1000, refine_stop_iter=2000)  # no growth/pruning here
    reset_logit = torch.logit(torch.tensor(0.005 * 2.0)).item()
    fixed_params, fixed_optimizers, fixed_history = run_default(FixedDefaultStrategy, 12, **fields)
    upstream_params, _, upstream_history = run_default(DefaultStrategy, 12, **fields)

    # Identical until the reset step ...
    for step in range(10):
        assert torch.equal(fixed_history[step], upstream_history[step]), step
    assert (torch.sigmoid(fixed_history[9]) > 0.05).all()  # opacities well above the reset value
    # ... then the fixed strategy clamps every opacity to the reset value at step 10 ...
    assert torch.allclose(fixed_history[10], torch.full_like(fixed_history[10], reset_logit))
    assert (torch.sigmoid(fixed_history[11]) < 0.05).all()
    state = fixed_optimizers["opacities"].state[fixed_params["opacities"]]
    assert state["exp_avg"].abs().max() < 0.2  # moments were zeroed at step 10, one Adam step ago
    # ... while 1.5.3's DefaultStrategy never resets (the bug).
    assert (torch.sigmoid(upstream_history[10]) > 0.05).all()
    assert torch.allclose(upstream_history[10], upstream_history[9], atol=0.2)


def test_fixed_default_strategy_is_otherwise_identical_including_densification():
    fields = dict(
        reset_every=10_000, refine_start_iter=2, refine_every=4, refine_stop_iter=100, grow_grad2d=1e-6, prune_opa=0.3
    )
    fixed_params, _, _ = run_default(FixedDefaultStrategy, 14, **fields)
    upstream_params, _, _ = run_default(DefaultStrategy, 14, **fields)
    assert len(fixed_params["means"]) != 60  # densification and pruning did happen
    for name in fixed_params:
        assert torch.equal(fixed_params[name], upstream_params[name]), name


# --------------------------------------------------------------------------------------------- against the CUDA ops


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: compares the torch ports with gsplat's kernels")
def test_ports_match_gsplats_cuda_kernels():
    from gsplat import quat_scale_to_covar_preci
    from gsplat.relocation import compute_relocation

    generator = torch.Generator().manual_seed(0)
    opacities = 0.02 + 0.96 * torch.rand(500, generator=generator)
    scales = torch.rand(500, 3, generator=generator) + 0.01
    ratios = torch.randint(1, 52, (500,), generator=generator)
    cuda_opacities, cuda_scales = compute_relocation(
        opacities.cuda(), scales.cuda(), ratios.cuda().clone(), BINOMS.cuda()
    )
    ours_opacities, ours_scales = relocation_torch(opacities, scales, ratios, BINOMS)
    assert torch.allclose(ours_opacities, cuda_opacities.cpu(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours_scales, cuda_scales.cpu(), rtol=1e-4, atol=1e-6)  # kernel sums in float32

    quats = torch.randn(100, 4, generator=generator)
    for triu in (False, True):
        cuda_covars, cuda_precis = quat_scale_to_covar_preci(quats.cuda(), scales[:100].cuda(), triu=triu)
        covars, precis = covar_torch(quats, scales[:100], triu=triu)
        assert torch.allclose(covars, cuda_covars.cpu(), rtol=1e-4, atol=1e-6)
        assert torch.allclose(precis, cuda_precis.cpu(), rtol=1e-4, atol=1e-3)
