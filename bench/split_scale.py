"""Benchmark: splitting a large model into ~12 patches, against pycolmap's bare read of the same model.

    python bench/split_scale.py [--images 1000] [--points 1000000] [--rows 3 --cols 4]

Target (issue 3): the split takes at most 3x the time of `pycolmap.Reconstruction(path)`.
Both run in fresh processes on the same cached model; the split's figure includes reading the
model, planning, writing every patch model, the statistics and the layout PNG.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import large_model, measure


SPLIT_IMPORTS = ("pycolmap", "scipy.spatial", "matplotlib.pyplot", "rich.progress", "patchsplat.split",
                 "patchsplat.split.plot", "patchsplat.validate.stats", "patchsplat.scene_layout")


def bare_read(model_dir: str) -> dict:
    import pycolmap

    reconstruction = pycolmap.Reconstruction(model_dir)
    return {"images": reconstruction.num_reg_images(), "points": reconstruction.num_points3D()}


def split(scene_dir: str, out_dir: str, rows: int, cols: int) -> dict:
    from patchsplat.config import SplitConfig, ValidateConfig
    from patchsplat.split import split_scene

    result = split_scene(Path(scene_dir), Path(out_dir), SplitConfig(mode="grid", rows=rows, cols=cols), ValidateConfig(), progress=False)
    return {"patches": result.summary["num_patches"],
            "points_written": sum(p["num_points"] for p in result.summary["patches"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--cols", type=int, default=4)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    scene = large_model(args.images, args.points)
    model = str(scene / "sparse" / "0")
    out = Path(tempfile.mkdtemp(prefix="patchsplat-bench-split-"))
    try:
        measure(bare_read, model)  # warm the page cache so neither side pays the first disk read
        read = measure(bare_read, model, imports=("pycolmap",))
        cut = measure(split, str(scene), str(out / "patches"), args.rows, args.cols, imports=SPLIT_IMPORTS)
    finally:
        shutil.rmtree(out, ignore_errors=True)

    time_ratio = cut["seconds"] / read["seconds"]
    memory_ratio = cut["peak_above_baseline_mb"] / max(read["peak_above_baseline_mb"], 1e-9)
    table = Table(title=f"split into {cut['result']['patches']} patches: {args.images} images, {args.points:,} points")
    for column in ("", "seconds", "peak RSS above baseline (MB)", "peak RSS (MB)"):
        table.add_column(column, justify="right")
    table.add_row("pycolmap.Reconstruction(path)", f"{read['seconds']:.2f}", f"{read['peak_above_baseline_mb']:.0f}", f"{read['peak_mb']:.0f}")
    table.add_row("patchsplat split", f"{cut['seconds']:.2f}", f"{cut['peak_above_baseline_mb']:.0f}", f"{cut['peak_mb']:.0f}")
    table.add_row("ratio", f"{time_ratio:.2f}x", f"{memory_ratio:.2f}x", "")
    Console().print(table)
    print(f"points written over all patches: {cut['result']['points_written']:,} "
          f"({cut['result']['points_written'] / read['result']['points']:.2f}x the model's, the overlap)")
    print(f"time: {time_ratio:.2f}x the bare read (target <= 3x): {'PASS' if time_ratio <= 3 else 'FAIL'}")


if __name__ == "__main__":
    main()
