"""reports/run.html: the page a pipeline run leaves behind, after a real ``patchsplat repro`` of the small demo.

What a user relies on: the page is there after the run, shows every section with the run's real numbers
and pictures, works offline (every image inside the file, nothing fetched from the internet), and a
failed or partial run still gets a page saying what is missing. The browser test opens it in headless
Chromium and saves ``run_report.png`` in its tmp folder (printed; ``pytest -s`` shows it).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest
from PIL import Image

from conftest import CHROMIUM, CHROMIUM_ARGS, playwright_or_skip, refuse_requests, small_workspace
from patchsplat.errors import PipelineFailed
from patchsplat.orchestrate import interrupts
from patchsplat.run_report import write_run_report, write_run_report_or_say_why
from patchsplat.run_report.page import SECTIONS
from patchsplat.stage_record import FAILED, StageRecord
from patchsplat.train.records import Attempt, AttemptsRecord
from patchsplat.workspace import Workspace

slow = pytest.mark.slow  # the tests of a real run (one `patchsplat repro`, ~2-3 min on 2 cores)


def _repro(workspace: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` in dvc.yaml = this venv
    env["PYTHONPATH"] = str(workspace / "src")  # run the copy's code, which is what DVC hashes
    env["DVC_NO_ANALYTICS"] = "1"
    completed = subprocess.run([sys.executable, "-m", "patchsplat.cli", "repro"], cwd=workspace, env=env,
                               capture_output=True, text=True)
    assert completed.returncode == 0, f"patchsplat repro failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The small demo after one ``patchsplat repro``."""
    workspace = small_workspace(tmp_path_factory.mktemp("run_report"))
    _repro(workspace)
    return workspace


def _page(workspace: Path) -> str:
    return Workspace(workspace).run_report.read_text(encoding="utf-8")


def _section(page: str, title: str) -> str:
    """The HTML of one section (from its heading to the next section)."""
    found = re.search(rf"<h2>{re.escape(title)}</h2>(.*?)</section>", page, re.S)
    assert found, f"no section {title!r}"
    return found.group(1)


def _images(page: str) -> dict[str, str]:
    """alt -> src of every <img>."""
    return dict(re.findall(r'<img alt="([^"]*)"[^>]*? src="([^"]*)"', page))


def _decoded(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))


@slow
def test_repro_writes_the_report_with_every_section_in_order(finished):
    page = _page(finished)
    positions = [page.find(f"<h2>{title}</h2>") for title in SECTIONS]
    assert all(position > 0 for position in positions), dict(zip(SECTIONS, positions))
    assert positions == sorted(positions), "the sections are out of order"
    header = page[: positions[0]]
    assert str(finished.resolve()) in header and "succeeded" in header and "0.1.0" in header
    assert "did not finish" not in header
    # The stage timings are the rows `patchsplat repro` closes with: each stage that ran, its time.
    timings = _section(page, "Stage timings")
    for stage in ("validate", "split", "train@p0", "train@p3", "merge", "mesh", "evaluate"):
        assert re.search(rf"<td>{re.escape(stage)}</td><td>done</td><td class=\"n\">\d+\.\d</td>", timings), stage


@slow
def test_the_metrics_are_the_evaluation_s(finished):
    evaluation = json.loads((finished / "reports/evaluation.json").read_text())
    metrics = _section(_page(finished), "Metrics")
    assert f"<td>PSNR</td><td>{evaluation['psnr']:.2f} dB</td>" in metrics
    assert f"<td>PSNR, colour-corrected</td><td>{evaluation['psnr_colour_corrected']:.2f} dB</td>" in metrics
    assert f"<td>SSIM</td><td>{evaluation['ssim']:.3f}</td>" in metrics
    assert f"<td>F-score</td><td>{evaluation['fscore']:.3f}</td>" in metrics
    for patch_id, row in evaluation["images"]["per_patch"].items():
        shown = f"{row['psnr']:.2f}" if row["psnr"] is not None else "-"
        assert f'<tr><td>{patch_id}</td><td class="n">{row["num_views"]}</td><td class="n">{shown}</td>' in metrics


@slow
def test_each_patch_has_its_curve_held_out_image_and_metrics(finished):
    page = _page(finished)
    images = _images(page)
    patch_ids = json.loads((finished / "reports/split.json").read_text())["patch_ids"]
    assert patch_ids == ["p0", "p1", "p2", "p3"]
    training = _section(page, "Training")
    for patch_id in patch_ids:
        curve = _decoded(images[f"{patch_id} training curve"])
        assert curve.width > 200 and curve.height > 100
        assert _decoded(images[f"{patch_id} held-out view"]).width > 0
        trained = json.loads((finished / f"data/trained/{patch_id}/metrics.json").read_text())
        assert f"<td>held-out PSNR</td><td>{trained['heldout_psnr']:.2f} dB</td>" in training
    assert "every patch trained at its first attempt" in _section(page, "Recovery")
    assert _decoded(images["split layout"]).width > 0 and _decoded(images["held-out views: photo | render"]).width > 0
    merge = json.loads((finished / "data/merged/merge.json").read_text())
    assert f"{merge['num_gaussians']:,} Gaussians in the merged scene" in _section(page, "Merge and mesh")


@slow
def test_the_page_is_self_contained_and_points_nowhere_but_this_machine(finished):
    page = _page(finished)
    sources = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    assert len(sources) == 2 + 2 * 4  # split layout, held-out grid; a curve and a held-out view per patch
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert re.findall(r"https?://[^\s\"'<>]+", page) == ["http://127.0.0.1:8080"] * 2  # the viewer's link and its text
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "patchsplat view " in _section(page, "Viewer")


@slow
def test_a_second_repro_with_nothing_to_do_leaves_the_report_as_it_was(finished):
    report = Workspace(finished).run_report
    before = report.read_bytes()
    _repro(finished)
    assert report.read_bytes() == before


@slow
def test_a_failed_run_s_report_says_what_is_missing(finished, tmp_path):
    """A run that stopped after training, p1's recovery ladder having run out: what is there is shown,
    each missing part says so in one line, and text from the files is escaped."""
    copy = tmp_path / "ws"
    shutil.copytree(finished, copy, ignore=shutil.ignore_patterns("cache", "src", ".git"))
    workspace = Workspace(copy)
    shutil.rmtree(workspace.merged_dir)
    shutil.rmtree(workspace.mesh_dir)
    workspace.evaluation_report.unlink()
    workspace.evaluation_grid.unlink()
    shutil.rmtree(workspace.patch("p1").trained_dir)
    reason = "loss is not finite <script>alert(1)</script>"
    AttemptsRecord([
        Attempt(1, {"lr_factor": 1.0}, 0, "failed", "nonfinite", reason, 7, {"lr_factor": 0.5}),
        Attempt(2, {"lr_factor": 0.5}, 5, "failed", "nonfinite", reason, 9, {}),
    ]).save(workspace.patch("p1").failed_record)

    out = write_run_report(workspace, [("train@p1", "FAILED (training_failed)", "3.2", reason)],
                           "failed: train: 1 of 4 patches failed", out=tmp_path / "partial.html", seconds=4.0)
    page = out.read_text(encoding="utf-8")
    assert all(f"<h2>{title}</h2>" in page for title in SECTIONS)
    assert "not available: reports/evaluation.json is missing" in _section(page, "Metrics")
    assert "not available: reports/evaluation_grid.png is missing" in _section(page, "Held-out grid")
    merge_and_mesh = _section(page, "Merge and mesh")
    assert "not available: data/merged/merge.json is missing" in merge_and_mesh
    assert "not available: data/mesh/mesh.json is missing" in merge_and_mesh
    training = _section(page, "Training")
    assert "not available: data/trained/p1/metrics.json is missing" in training and "training failed" in training
    assert "p0 training curve" in training and "p1 training curve" not in training
    recovery = _section(page, "Recovery")
    assert "p1: failed after its recovery ladder" in recovery
    assert "failed (nonfinite at step 7)" in recovery and "lr_factor 0.5" in recovery
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in recovery
    assert "failed: train: 1 of 4 patches failed" in page[: page.find("<h2>")]
    # What an earlier run left (p0's training here) is not passed off as this run's.
    assert "This run did not finish." in page[: page.find("<h2>")]


@pytest.mark.parametrize("stop, outcome", [
    (PipelineFailed("dvc repro validate", "data/scene: no images"), "failed: dvc repro validate: data/scene: no images"),
    (interrupts.NotStarted("interrupted"), "interrupted"),
])
def test_a_repro_that_failed_or_was_interrupted_writes_its_report_saying_so(tmp_path, monkeypatch, stop, outcome):
    """The stages are stood in for (no DVC): the first one records that it failed, then stops the run."""
    from patchsplat.orchestrate import repro as repro_module

    def first_stage_stops(arguments, workspace, environment, records) -> None:
        records.add([StageRecord("validate", FAILED, 1.5, "input", "data/scene: no images")])
        raise stop

    monkeypatch.setattr(repro_module, "_repro_step", first_stage_stops)
    with pytest.raises(type(stop)):
        repro_module.repro(Workspace(tmp_path))
    page = _page(tmp_path)
    assert f'class="outcome-{outcome.split(":")[0]}">{escape(outcome)}</strong>' in page[: page.find("<h2>")]
    assert ('<td>validate</td><td>failed (input)</td><td class="n">1.5</td><td>data/scene: no images</td>'
            in _section(page, "Stage timings"))
    assert "not available: reports/validation.json is missing" in _section(page, "Validation")


def test_a_workspace_with_nothing_in_it_still_gets_a_page(tmp_path):
    out = write_run_report(Workspace(tmp_path), [], "interrupted")
    page = out.read_text(encoding="utf-8")
    assert out == Workspace(tmp_path).run_report
    assert all(f"<h2>{title}</h2>" in page for title in SECTIONS)
    assert "not available: reports/validation.json is missing" in page and "no stage ran" in page


def test_a_report_that_cannot_be_written_is_one_line_not_an_error_of_the_run(tmp_path):
    Workspace(tmp_path).run_report.mkdir(parents=True)  # a folder where the page should go
    said: list[str] = []
    assert write_run_report_or_say_why(Workspace(tmp_path), lambda: [], "succeeded", say=said.append) is None
    assert len(said) == 1 and "reports/run.html: the run report was not written" in said[0]


@slow
@pytest.mark.timeout(300)
def test_the_page_shows_every_image_and_heading_in_headless_chromium(finished, tmp_path):
    sync_playwright = playwright_or_skip()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        # Offline: everything but the page's own file (and its data: images) is recorded and refused.
        outside = refuse_requests(page, lambda url: url.startswith(("file://", "data:")))
        page.goto(Workspace(finished).run_report.resolve().as_uri())
        page.wait_for_load_state("load")
        screenshot = tmp_path / "run_report.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"run report screenshot: {screenshot}")
        widths = page.evaluate("[...document.images].map(image => [image.alt, image.complete ? image.naturalWidth : 0])")
        assert len(widths) == 10 and all(width > 0 for _, width in widths), f"{widths} (screenshot: {screenshot})"
        for title in SECTIONS:
            assert page.get_by_role("heading", name=title, exact=True).is_visible(), title
        browser.close()
    assert outside == [], f"the page asked for {outside}"
