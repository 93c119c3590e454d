"""One training budget shared among patches: what makes the single model and the split comparable."""

from __future__ import annotations


def apportion(total: int, weights: dict[str, int], minimum: int = 1) -> dict[str, int]:
    """``total`` shared in proportion to ``weights`` (largest remainders), each share at least ``minimum``.

    The shares sum to ``total`` unless the minimums force more (a tiny total over many patches).
    """
    if not weights:
        return {}
    weight_sum = sum(weights.values())
    exact = {key: total * weight / weight_sum if weight_sum else total / len(weights) for key, weight in weights.items()}
    shares = {key: int(value) for key, value in exact.items()}
    by_remainder = sorted(weights, key=lambda key: exact[key] - shares[key], reverse=True)
    for key in by_remainder[: total - sum(shares.values())]:
        shares[key] += 1
    return {key: max(minimum, share) for key, share in shares.items()}


def patch_overrides(total_steps: int, total_cap: int, train_images: dict[str, int], points: dict[str, int],
                    scene_points: int) -> dict[str, dict]:
    """Each patch's training override, from the single model's steps and Gaussian cap.

    Steps: the total shared in proportion to the patches' training images (the compute budget: one image
    per step, the sum equal to the single model's). Gaussians: the budget is the merged scene's, so each patch
    may hold as many per SfM point of its model as the single model may per point of the scene
    (``total_cap * points / scene_points``). A patch's model also holds its overlap and the far points its
    cameras see, whose Gaussians merging drops; sharing the cap itself would leave the merged scene with a
    fraction of the single model's Gaussians (the demo: 25k of 60k)."""
    steps = apportion(total_steps, train_images)
    return {patch_id: {"steps": steps[patch_id],
                       "strategy": {"cap_max": max(100, round(total_cap * points[patch_id] / scene_points))}}
            for patch_id in train_images}
