"""A patch's training curve as PNG bytes: the loss at every step, the held-out PSNR at each evaluation."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from patchsplat.run_report.collect import CurvePoint  # noqa: E402


def curve_png(patch_id: str, curve: tuple[CurvePoint, ...]) -> bytes:
    # A Figure of its own, not pyplot: no global state shared with other threads of the flow.
    figure = Figure(figsize=(5.0, 2.6), dpi=100)
    FigureCanvasAgg(figure)
    loss_axis = figure.add_subplot()
    losses = [(point.step, point.loss) for point in curve if point.loss is not None]
    psnrs = [(point.step, point.heldout_psnr) for point in curve if point.heldout_psnr is not None]
    if losses:
        loss_axis.plot(*zip(*losses), color="tab:blue", linewidth=1.0)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss", color="tab:blue")
    psnr_axis = loss_axis.twinx()
    if psnrs:
        psnr_axis.plot(*zip(*psnrs), color="tab:orange", marker="o", markersize=3, linewidth=1.0)
    psnr_axis.set_ylabel("held-out PSNR (dB)", color="tab:orange")
    loss_axis.set_title(f"{patch_id}: training loss and held-out PSNR", fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
