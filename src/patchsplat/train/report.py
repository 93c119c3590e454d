"""What a person looks at after training: the loss/PSNR curve file and a held-out view."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from patchsplat.atomic import atomic_file

CURVE_COLUMNS = ("step", "attempt", "loss", "heldout_psnr", "heldout_ssim", "gaussians")


def write_curve(path: Path, records: list[dict]) -> None:
    """One row per step (``dvc plots`` reads it); empty cells where a value was not measured at that step."""
    with atomic_file(path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({key: record.get(key, "") for key in CURVE_COLUMNS})


def heldout_figure(path: Path, truth: np.ndarray, render: np.ndarray, title: str) -> None:
    """ground truth | render | error (mean absolute difference, colour-mapped) side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    error = np.abs(truth - render).mean(axis=-1)
    height, width = truth.shape[:2]
    figure, axes = plt.subplots(1, 3, figsize=(3 * max(3.0, width / 60), max(2.5, height / 60) + 0.6), dpi=100)
    for axis, image, label in zip(axes, (truth, render, None), ("ground truth", "render", "error |truth - render|")):
        if image is not None:
            axis.imshow(np.clip(image, 0, 1), interpolation="nearest")
        else:
            shown = axis.imshow(error, cmap="inferno", vmin=0, vmax=max(0.25, float(error.max())), interpolation="nearest")
            figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
        axis.set_title(label, fontsize=9)
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    with atomic_file(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(figure)
