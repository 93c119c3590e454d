"""Image metrics: hand-computed values, agreement with scikit-image, and loud rejection of wrong inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from patchsplat.metrics import (
    check_images,
    colour_corrected,
    colour_corrected_psnr,
    gaussian_window,
    l1,
    l1_and_ssim,
    mse,
    psnr,
    ssim,
)


def constant(value: float, shape=(1, 3, 16, 16), dtype=torch.float32) -> torch.Tensor:
    return torch.full(shape, value, dtype=dtype)


def skimage_ssim(prediction: torch.Tensor, target: torch.Tensor) -> list[float]:
    """scikit-image's SSIM per image, configured as the Wang et al. / gsplat definition."""
    values = []
    for pred, targ in zip(prediction, target):
        values.append(
            structural_similarity(
                pred.permute(1, 2, 0).double().numpy(),
                targ.permute(1, 2, 0).double().numpy(),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                channel_axis=-1,
            )
        )
    return values


def structured_pair(height=40, width=52) -> tuple[torch.Tensor, torch.Tensor]:
    """A gradient + checkerboard + disc image and a blurred, shifted, noisy copy of it."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    checker = ((torch.arange(height)[:, None] // 4 + torch.arange(width)[None, :] // 4) % 2).float()
    disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.08).float()
    image = torch.stack([0.6 * xx + 0.3 * checker, 0.5 * yy + 0.4 * disc, 0.2 + 0.5 * checker * disc]).clamp(0, 1)
    generator = torch.Generator().manual_seed(3)
    shifted = torch.roll(image, shifts=(1, 2), dims=(1, 2))
    other = (0.7 * shifted + 0.3 * image + 0.05 * torch.randn(image.shape, generator=generator)).clamp(0, 1)
    return image[None], other[None]


# ---------------------------------------------------------------------------------------------- PSNR / L1


def test_psnr_of_two_constant_images_matches_the_hand_computed_value():
    # mse = (0.5 - 0.25)^2 = 0.0625 -> 10 * log10(1 / 0.0625) = 12.041199826559248 dB
    expected = 10 * math.log10(1 / 0.0625)
    value = psnr(constant(0.5), constant(0.25))
    assert value.shape == (1,)
    assert value.item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(12.0411998, abs=1e-6)


def test_psnr_is_per_image_over_all_channels_and_pixels():
    prediction = torch.cat([constant(0.5), constant(0.1)])
    target = torch.cat([constant(0.4), constant(0.1)])
    target[1, 0] = 0.3  # one of three channels differs by 0.2 -> mse = 0.04 / 3
    values = psnr(prediction, target)
    assert values.shape == (2,)
    assert values[0].item() == pytest.approx(10 * math.log10(1 / 0.01), abs=1e-4)
    assert values[1].item() == pytest.approx(10 * math.log10(3 / 0.04), abs=1e-4)


def test_psnr_of_identical_images_is_infinite():
    image = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(psnr(image, image.clone())).all()


def test_l1_and_mse_hand_values():
    prediction, target = constant(0.75, (2, 1, 4, 5)), constant(0.5, (2, 1, 4, 5))
    assert torch.allclose(l1(prediction, target), torch.tensor([0.25, 0.25]))
    assert torch.allclose(mse(prediction, target), torch.tensor([0.0625, 0.0625]))


# ---------------------------------------------------------------------------------------------- SSIM


def test_gaussian_window_is_the_11_tap_sigma_1_5_window():
    window = gaussian_window(dtype=torch.float64)
    offsets = np.arange(11) - 5
    expected = np.exp(-(offsets**2) / (2 * 1.5**2))
    np.testing.assert_allclose(window.numpy(), expected / expected.sum(), rtol=1e-12)


def test_ssim_of_identical_images_is_one():
    image = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ssim(image, image.clone()), torch.ones(3), atol=1e-6)


def test_ssim_of_two_constant_images_matches_the_hand_computed_value():
    # Constant images: variances and covariance vanish, so SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2.
    a, b, c1 = 0.5, 0.25, 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert expected == pytest.approx(0.2501 / 0.3126)
    assert ssim(constant(a), constant(b)).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage_on_random_images(channels):
    generator = torch.Generator().manual_seed(7)
    prediction = torch.rand(2, channels, 33, 27, generator=generator)
    target = (prediction + 0.2 * torch.randn(prediction.shape, generator=generator)).clamp(0, 1)
    ours = ssim(prediction, target)
    np.testing.assert_allclose(ours.numpy(), skimage_ssim(prediction, target), atol=1e-4)
    ours64 = ssim(prediction.double(), target.double())
    assert ours64.dtype == torch.float64
    np.testing.assert_allclose(ours64.numpy(), skimage_ssim(prediction, target), atol=1e-10)


def test_ssim_matches_skimage_on_structured_images():
    prediction, target = structured_pair()
    ours = ssim(prediction, target)
    expected = skimage_ssim(prediction, target)
    assert 0.2 < expected[0] < 0.95  # a meaningful, non-trivial comparison
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)


def test_ssim_is_differentiable():
    generator = torch.Generator().manual_seed(2)
    prediction = (0.2 + 0.6 * torch.rand(1, 1, 12, 13, generator=generator, dtype=torch.float64)).requires_grad_()
    target = 0.2 + 0.6 * torch.rand(1, 1, 12, 13, generator=generator, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: ssim(x, target), (prediction,), eps=1e-6, atol=1e-5)


def _native_or_skip():
    from patchsplat.render import native

    if native.load() is None:
        pytest.skip("the native CPU kernels did not build here (python -m patchsplat.render.native says why)")


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_the_training_loss_terms_are_l1_and_ssim_natively_and_in_torch(dtype, tolerance):
    """The native pass gives l1 and ssim per image and their gradient w.r.t. the prediction as the torch functions
    do (two images, one channel and three, a width that is not a multiple of anything), and the known values:
    identical images give L1 0 and SSIM 1."""
    _native_or_skip()
    generator = torch.Generator().manual_seed(4)
    for channels in (1, 3):
        prediction = torch.rand(2, channels, 40, 57, generator=generator, dtype=dtype)
        target = (prediction + 0.1 * torch.randn(prediction.shape, generator=generator, dtype=dtype)).clamp(0, 1)
        results = {}
        for kernels in ("native", "torch"):
            x = prediction.clone().requires_grad_()
            l1_values, ssim_values = l1_and_ssim(x, target, kernels=kernels)
            (0.8 * l1_values.sum() + 0.2 * (1 - ssim_values).sum() + 0.3 * ssim_values[0]).backward()
            results[kernels] = (l1_values.detach(), ssim_values.detach(), x.grad)
        torch.testing.assert_close(results["torch"][0], l1(prediction, target))
        torch.testing.assert_close(results["torch"][1], ssim(prediction, target))
        for ours, theirs in zip(results["native"], results["torch"]):
            torch.testing.assert_close(ours, theirs, atol=tolerance * theirs.abs().max().item(), rtol=tolerance)
    same = l1_and_ssim(prediction, prediction.clone(), kernels="native")
    assert torch.all(same[0] == 0) and torch.allclose(same[1], torch.ones(2, dtype=dtype), atol=1e-6)


def test_the_native_loss_terms_give_the_same_bits_at_any_thread_count():
    """Each row's sums are added in row order afterwards: the loss and its gradient do not depend on the threads."""
    _native_or_skip()
    generator = torch.Generator().manual_seed(5)
    prediction = torch.rand(1, 3, 120, 160, generator=generator)
    target = torch.rand(1, 3, 120, 160, generator=generator)
    threads, outputs = torch.get_num_threads(), []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            x = prediction.clone().requires_grad_()
            l1_values, ssim_values = l1_and_ssim(x, target, kernels="native")
            (l1_values + ssim_values).sum().backward()
            outputs.append((l1_values.detach(), ssim_values.detach(), x.grad))
    finally:
        torch.set_num_threads(threads)
    for other in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs[0], other))


def test_metrics_run_in_fp32_under_bf16_autocast():
    prediction, target = structured_pair()
    reference = ssim(prediction, target)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = ssim(prediction, target)
        loss = 1.0 - ssim(prediction.bfloat16(), target)
        l1_value = l1(prediction.bfloat16(), target)
    assert value.dtype == torch.float32 and loss.dtype == torch.float32 and l1_value.dtype == torch.float32
    assert torch.equal(value, reference)
    # bf16 inputs lose precision in the input only (8 bits of mantissa), not in the arithmetic.
    assert abs((1 - loss) - reference).item() < 5e-3


def test_training_loss_accepts_overshooting_predictions_when_asked():
    prediction, target = structured_pair()
    overshoot = prediction * 1.3  # SH colours are clamped at 0 only, so renders can exceed 1
    with pytest.raises(ValueError, match="prediction"):
        ssim(overshoot, target)
    value = ssim(overshoot, target, check_prediction_range=False)
    assert torch.isfinite(value).all()
    with pytest.raises(ValueError, match="target.*divide by 255"):
        ssim(prediction, target * 255, check_prediction_range=False)


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(constant(0.5, (1, 3, 10, 30)), constant(0.5, (1, 3, 10, 30)))


# ------------------------------------------------------------------------------------- colour-corrected PSNR


def affine_pair(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(render, truth, M, b): a random render in [0.2, 0.8] and truth = M render + b exactly, per pixel,
    with M a random 3x3 near the identity and b a small offset (a camera's exposure / white balance)."""
    generator = torch.Generator().manual_seed(seed)
    render = 0.2 + 0.6 * torch.rand(2, 3, 24, 32, generator=generator, dtype=torch.float64)
    matrix = torch.eye(3, dtype=torch.float64) + 0.05 * torch.randn(3, 3, generator=generator, dtype=torch.float64)
    offset = torch.tensor([0.04, -0.03, 0.02], dtype=torch.float64)
    truth = torch.einsum("ij,bjhw->bihw", matrix, render) + offset[None, :, None, None]
    assert 0.0 < float(truth.min()) and float(truth.max()) < 1.0   # the map needs no clamping
    return render.float(), truth.float(), matrix, offset


def test_an_exact_affine_colour_change_is_forgiven_by_the_colour_corrected_psnr():
    render, truth, _, _ = affine_pair()
    by_hand = [10 * math.log10(1.0 / float(((r.double() - t.double()) ** 2).mean())) for r, t in zip(render, truth)]
    plain = psnr(render, truth)
    assert plain.tolist() == pytest.approx(by_hand, abs=1e-3)
    assert all(value < 30.0 for value in by_hand)                 # the colour change alone costs a lot
    corrected = colour_corrected_psnr(render, truth)
    assert corrected.shape == (2,) and bool((corrected >= 60.0).all())
    # The fitted map is the colour change itself: the corrected render is the truth (up to float32).
    assert torch.allclose(colour_corrected(render, truth), truth, atol=1e-5)


def test_colour_correction_is_the_least_squares_fit_of_the_truth_on_the_render_per_image():
    # truth = M render + b + noise: the map is numpy's least squares of the truth's pixels on [render, 1]
    # (4 x 3), one per image; fitting the reverse (render on truth) and inverting it scores worse.
    render, truth, _, _ = affine_pair(seed=4)
    generator = torch.Generator().manual_seed(5)
    truth = (truth + 0.03 * torch.randn(truth.shape, generator=generator)).clamp(0, 1)
    truth[1] = (0.5 * render[1] + 0.25).clamp(0, 1)          # a different map for the second image
    corrected = colour_corrected(render, truth)
    assert corrected.shape == render.shape and corrected.dtype == torch.float32
    for index, (r, t, c) in enumerate(zip(render, truth, corrected)):
        pixels = r.double().reshape(3, -1).T.numpy()                               # [N, 3]
        target = t.double().reshape(3, -1).T.numpy()
        design = np.concatenate([pixels, np.ones((len(pixels), 1))], axis=1)      # [N, 4]
        forward, *_ = np.linalg.lstsq(design, target, rcond=None)               # [4, 3]
        expected = np.clip(design @ forward, 0, 1)
        np.testing.assert_allclose(c.reshape(3, -1).T.numpy(), expected, atol=1e-5)
        reverse, *_ = np.linalg.lstsq(np.concatenate([target, np.ones((len(target), 1))], axis=1), pixels, rcond=None)
        inverted = np.clip((pixels - reverse[3]) @ np.linalg.inv(reverse[:3]), 0, 1)
        if index == 0:   # with noise; the second image's exact map fits both ways, to rounding (a coin toss)
            assert np.mean((expected - target) ** 2) < np.mean((inverted - target) ** 2)
    assert torch.allclose(corrected[1], truth[1], atol=1e-5)


def test_identical_images_stay_an_exact_match_after_colour_correction():
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    assert bool(torch.isinf(psnr(image, image.clone())).all())
    assert bool(torch.isinf(colour_corrected_psnr(image, image.clone())).all())
    assert torch.equal(colour_corrected(image, image.clone()), image)
    # Values a rounding step above 1 pass check_images' tolerance; clamping the fitted render to [0, 1]
    # would move them off the truth, so the render is kept as it is: still an exact match.
    overshoot = image.clone()
    overshoot[:, :, :4] = 1.0005
    assert bool(torch.isinf(colour_corrected_psnr(overshoot, overshoot.clone())).all())


def test_colour_correction_cannot_remove_noise():
    generator = torch.Generator().manual_seed(7)
    truth = 0.1 + 0.8 * torch.rand(1, 3, 40, 52, generator=generator, dtype=torch.float64)
    render = truth + 0.02 * torch.randn(truth.shape, generator=generator, dtype=torch.float64)  # stays in [0, 1]
    assert 0.0 <= float(render.min()) and float(render.max()) <= 1.0
    by_hand = 10 * math.log10(1.0 / float(((render - truth) ** 2).mean()))
    assert 33.0 < by_hand < 35.0                                  # sigma 0.02: 10 log10(1 / 0.0004) = 34 dB
    assert float(psnr(render, truth)[0]) == pytest.approx(by_hand, abs=1e-6)
    corrected = float(colour_corrected_psnr(render, truth)[0])
    assert by_hand <= corrected < by_hand + 0.5


def test_colour_corrected_psnr_handles_a_flat_render_and_one_channel():
    # A flat render makes the design rank-deficient: the best map is the truth's mean colour.
    truth = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    flat = torch.full_like(truth, 0.9)
    corrected = colour_corrected(flat, truth)
    assert torch.allclose(corrected, truth.mean(dim=(2, 3), keepdim=True).expand_as(truth), atol=1e-9)
    assert float(colour_corrected_psnr(flat, truth)[0]) > float(psnr(flat, truth)[0])
    grey = truth[:, :1]
    assert float(colour_corrected_psnr(0.5 * grey + 0.1, grey)[0]) >= 60.0


# ---------------------------------------------------------------------------------------------- rejections


def test_motivating_bug_hwc_images_raise_instead_of_giving_a_wrong_number():
    # The failure this module exists for: channels-last images went into an NCHW metric and a
    # plausible-looking PSNR came out. Now both layouts are refused with the fix in the message.
    generator = torch.Generator().manual_seed(5)
    prediction_hwc = torch.rand(48, 64, 3, generator=generator)
    target_hwc = torch.rand(48, 64, 3, generator=generator)
    for metric in (psnr, ssim, l1, colour_corrected_psnr, colour_corrected):
        with pytest.raises(ValueError, match=r"looks like NHWC/HWC.*permute to NCHW"):
            metric(prediction_hwc, target_hwc)
        with pytest.raises(ValueError, match=r"prediction has shape \(1, 48, 64, 3\).*looks like NHWC/HWC.*permute to NCHW"):
            metric(prediction_hwc[None], target_hwc[None])
    # After the permute the same data is accepted.
    value = psnr(prediction_hwc.permute(2, 0, 1)[None], target_hwc.permute(2, 0, 1)[None])
    assert value.shape == (1,)


@pytest.mark.parametrize(
    ("prediction", "target", "pattern"),
    [
        (torch.rand(3, 16, 16), torch.rand(3, 16, 16), r"prediction has shape \(3, 16, 16\).*unsqueeze\(0\)"),
        (torch.rand(16, 16), torch.rand(16, 16), r"prediction has shape \(16, 16\) \(2-D\); expected 4-D"),
        (torch.rand(1, 1, 3, 16, 16), torch.rand(1, 1, 3, 16, 16), r"\(5-D\); expected 4-D"),
        (torch.rand(1, 4, 16, 16), torch.rand(1, 4, 16, 16), r"C in \{1, 3\}, got C=4"),
        (torch.rand(1, 3, 16, 16), torch.rand(1, 16, 16, 3), r"target has shape \(1, 16, 16, 3\).*NHWC"),
        (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17), r"prediction has shape \(1, 3, 16, 16\) but target has shape \(1, 3, 16, 17\)"),
        (torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 16), r"identical \[B, C, H, W\] shapes"),
        (torch.rand(1, 3, 16, 16) * 255, torch.rand(1, 3, 16, 16), r"prediction .*looks like 0-255; divide by 255"),
        (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16) * 255, r"target .*looks like 0-255; divide by 255"),
        (torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16), r"looks like \[-1, 1\]"),
        (torch.full((1, 3, 16, 16), 1e4), torch.rand(1, 3, 16, 16), r"not an image in \[0, 1\]"),
        (torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8), torch.rand(1, 3, 16, 16), r"integer/bool dtype torch.uint8.*/ 255"),
        (torch.rand(1, 3, 16, 16), torch.ones(1, 3, 16, 16, dtype=torch.int64), r"target has integer/bool dtype torch.int64"),
        (np.random.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), r"must be a torch.Tensor"),
        (torch.zeros(0, 3, 16, 16), torch.zeros(0, 3, 16, 16), r"empty"),
    ],
)
def test_wrong_layout_range_and_dtype_are_rejected_with_a_hint(prediction, target, pattern):
    for metric in (psnr, ssim, l1, colour_corrected_psnr, colour_corrected):
        with pytest.raises(ValueError, match=pattern):
            metric(prediction, target)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_rejected(bad_value):
    prediction = torch.rand(1, 3, 16, 16)
    prediction[0, 1, 2, 3] = bad_value
    with pytest.raises(ValueError, match=r"prediction \(shape \(1, 3, 16, 16\)\) has 1 non-finite value"):
        psnr(prediction, torch.rand(1, 3, 16, 16))
    # Non-finite values are rejected even when the range check is relaxed for training.
    with pytest.raises(ValueError, match="non-finite"):
        ssim(prediction, torch.rand(1, 3, 16, 16), check_prediction_range=False)


def test_values_within_rounding_tolerance_are_accepted_and_the_message_names_the_caller():
    prediction = torch.rand(1, 3, 16, 16) * (1 + 5e-4)
    check_images(prediction, torch.rand(1, 3, 16, 16), name="eval view 3")
    with pytest.raises(ValueError, match=r"^eval view 3: prediction .*divide by 255"):
        check_images(prediction * 200, torch.rand(1, 3, 16, 16), name="eval view 3")
