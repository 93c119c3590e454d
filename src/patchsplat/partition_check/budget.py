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


def patch_overrides(total_steps: int, total_cap: int, train_images: dict[str, int]) -> dict[str, dict]:
    """Each patch's training override: the single model's steps and Gaussian cap shared in proportion to
    the patch's training images, so every training image is visited about as often as in the single model
    and the merged scene may hold at most as many Gaussians (fewer: overlap Gaussians are dropped at merge)."""
    steps = apportion(total_steps, train_images)
    caps = apportion(total_cap, train_images, minimum=100)  # the recovery ladder's floor for a cap
    return {patch_id: {"steps": steps[patch_id], "strategy": {"cap_max": caps[patch_id]}} for patch_id in train_images}
