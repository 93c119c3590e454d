"""How the patch ids reach ``dvc.yaml``, and how they are kept in sync with the split.

DVC resolves the whole pipeline before running anything, so the list of per-patch
stages (``prepare@p0``, ``prepare@p1``, ...) must be known before the split has run.
patchsplat keeps that list in ``params.yaml`` itself: the keys of ``patch_overrides``
(one per patch, each holding that patch's training overrides). ``dvc.yaml`` iterates
over them with ``foreach: ${patch_overrides}``, and each per-patch stage depends on
``train`` plus its own ``patch_overrides.<id>``, so editing one patch's override reruns
only that patch.

The split stage refuses to run when its patch ids differ from those keys. Then
``patchsplat repro`` re-syncs: it computes the new ids, rewrites the keys (keeping the
overrides of ids that survive, comments and layout preserved), deletes the outputs and
``dvc.lock`` entries of per-patch stages whose id is gone, and runs ``dvc repro``.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchsplat.errors import InputError

PER_PATCH_KEY = "${key}"


@dataclass(frozen=True)
class SyncResult:
    old_ids: list[str]
    new_ids: list[str]
    removed_outputs: list[str]
    removed_lock_entries: list[str]

    @property
    def changed(self) -> bool:
        return self.old_ids != self.new_ids


def _round_trip_yaml():
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def params_patch_ids(params_path: Path) -> list[str]:
    from patchsplat.config import load_params

    return list(load_params(params_path).patch_overrides)


def check_patch_ids(new_ids: list[str], params_path: Path) -> None:
    """Raise a one-line error telling the user to run ``patchsplat repro`` when the ids differ."""
    current = params_patch_ids(params_path)
    if current != new_ids:
        raise InputError(
            params_path,
            f"the split makes {len(new_ids)} patches ({_span(new_ids)}) but patch_overrides lists "
            f"{len(current)} ({_span(current)}): run `patchsplat repro` to re-sync the patch ids and reproduce",
            kind="patch_ids_out_of_sync",
        )


def _span(ids: list[str]) -> str:
    return "none" if not ids else (ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}")


def _load_yaml(loader, path: Path) -> Any:
    """``path`` read with the ruamel ``loader``; a damaged file (a hand edit, a crash mid-write by another
    tool) is an InputError naming it and the line, not a traceback."""
    from ruamel.yaml import YAMLError

    try:
        return loader.load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise InputError(path, f"not UTF-8 text (offset {error.start})", kind="corrupt_file") from None
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(path, f"not valid YAML{where}", kind="corrupt_file") from None


def _per_patch_outputs(dvc_yaml: Path) -> list[str]:
    """Output path templates (with ``${key}``) of the foreach stages over the patch ids."""
    from ruamel.yaml import YAML

    stages = (_load_yaml(YAML(typ="safe"), dvc_yaml) or {}).get("stages", {})
    templates = []
    for stage in stages.values():
        if isinstance(stage, dict) and str(stage.get("foreach", "")).strip() == "${patch_overrides}":
            for section in ("outs", "metrics", "plots"):
                for entry in stage.get("do", {}).get(section, []) or []:
                    path = next(iter(entry)) if isinstance(entry, dict) else entry
                    if PER_PATCH_KEY in str(path):
                        templates.append(str(path))
    return templates


def sync_patch_ids(new_ids: list[str], workspace: Path = Path(".")) -> SyncResult:
    """Make ``params.yaml``'s patch_overrides keys equal ``new_ids``; remove what belonged to dropped ids."""
    params_path, lock_path, dvc_yaml = workspace / "params.yaml", workspace / "dvc.lock", workspace / "dvc.yaml"
    yaml = _round_trip_yaml()
    document = _load_yaml(yaml, params_path)
    overrides = document.get("patch_overrides") or {}
    old_ids = list(overrides)
    removed_outputs: list[str] = []
    removed_entries: list[str] = []
    if old_ids != new_ids:
        from ruamel.yaml.comments import CommentedMap

        synced = CommentedMap()
        for patch_id in new_ids:
            synced[patch_id] = overrides.get(patch_id) if overrides.get(patch_id) else CommentedMap()
            if not synced[patch_id]:
                synced[patch_id].fa.set_flow_style()
        document["patch_overrides"] = synced
        from patchsplat.atomic import atomic_file

        with atomic_file(params_path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            yaml.dump(document, handle)

    # Outputs of dropped ids: whatever matches a per-patch output template with an id not in new_ids
    # (and a dropped patch's failed-training record, data/trained/<id>.failed.json).
    keep = set(new_ids)
    for template in _per_patch_outputs(dvc_yaml) if dvc_yaml.exists() else []:
        prefix, _, suffix = template.partition(PER_PATCH_KEY)
        # data/trained/${key}/splats.ply: the whole data/trained/<id> folder is that patch's.
        suffix = "" if suffix.startswith("/") else suffix
        owned = re.compile(re.escape(prefix) + r"(p\d+)(\.failed\.json)?" + re.escape(suffix))
        for match in sorted(glob.glob(glob.escape(str(workspace)) + "/" + prefix + "*" + suffix)):
            path = Path(match)
            # Matched on the path relative to the workspace: str(Path) drops the template's trailing
            # "/", so slicing the absolute string would misread every id (and delete kept patches).
            found = owned.fullmatch(path.relative_to(workspace).as_posix())
            if found and found.group(1) not in keep and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                removed_outputs.append(path.relative_to(workspace).as_posix())

    if lock_path.exists():
        lock = _load_yaml(yaml, lock_path)
        stages = lock.get("stages", {})
        for name in list(stages):
            stage, at, patch_id = name.partition("@")
            if at and patch_id.startswith("p") and patch_id[1:].isdigit() and patch_id not in keep:
                del stages[name]
                removed_entries.append(name)
        if removed_entries:
            from patchsplat.atomic import atomic_file

            with atomic_file(lock_path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
                yaml.dump(lock, handle)
    return SyncResult(old_ids, list(new_ids), removed_outputs, removed_entries)


class StageTimes:
    """What each stage process of a ``dvc repro`` did and how long it took, in its own words:
    :func:`patchsplat.console.guarded` appends one JSON line per stage to the file named by
    ``$PATCHSPLAT_STAGE_TIMES``. DVC itself keeps no timings, and the stages write to the terminal
    directly (their progress bars need it), so this is how ``patchsplat repro`` learns them."""

    def __init__(self) -> None:
        import os
        import tempfile

        handle, name = tempfile.mkstemp(prefix="patchsplat-stage-times-", suffix=".jsonl")
        os.close(handle)
        self.path = Path(name)

    def records(self) -> list[dict]:
        import json

        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a killed stage
        return records

    def interrupted(self) -> list[str]:
        return [record["stage"] for record in self.records() if record.get("outcome") == "interrupted"]

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


# After an interrupt, what DVC prints about it is noise next to the closing line that says what stopped.
_INTERRUPT_NOISE = ("ERROR: failed to reproduce", "ERROR: interrupted by the user", "KeyboardInterrupt")


def _pass_on(stream, sink) -> None:
    """Copy a dvc process's stderr to ours, line by line, dropping DVC's reports of an interrupt (and any
    traceback a stage caught mid-import prints) once we are being interrupted."""
    from patchsplat.orchestrate import interrupts

    in_traceback = False
    for line in stream:
        if interrupts.interrupted.is_set():
            if line.startswith("Traceback (most recent call last)"):
                in_traceback = True
            if in_traceback:
                in_traceback = line[:1].isspace() or line.startswith(("Traceback", "During handling", "The above exception"))
                continue
            if line.startswith(_INTERRUPT_NOISE):
                continue
        sink.write(line)
        sink.flush()


def _run_dvc(args: tuple[str, ...], workspace: Path, environment: dict[str, str] | None, label: str) -> int:
    """``python -m dvc ARGS`` as a registered child (its output on our terminal); its exit status."""
    import threading

    from patchsplat.orchestrate import interrupts

    with interrupts.child([sys.executable, "-m", "dvc", *args], label, cwd=workspace, env=environment,
                          stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1) as process:
        pump = threading.Thread(target=_pass_on, args=(process.stderr, sys.stderr), daemon=True)
        pump.start()
        returncode = process.wait()
        pump.join(timeout=5)
    return returncode


def _dvc(*args: str, workspace: Path, environment: dict[str, str] | None = None) -> None:
    from patchsplat.orchestrate import interrupts

    returncode = _run_dvc(args, workspace, environment, "dvc " + " ".join(args))
    if interrupts.interrupted.is_set():
        raise interrupts.NotStarted("interrupted")  # nothing after this step runs
    if returncode != 0:
        raise InputError("dvc " + " ".join(args), f"failed with exit status {returncode}", kind="dvc_failed")


def _train_in_parallel(patch_ids: list[str], jobs: int, workspace: Path, environment: dict[str, str] | None = None) -> None:
    """``dvc repro -s train@<id>`` for several patches at once, one CPU thread each.

    DVC takes a repository lock per ``repro`` but releases it while the stage's command runs; with
    ``-s`` (this stage only) concurrent runs in one workspace work, which is what lets independent
    patches train side by side (``--wait-for-lock``: two patches finishing together queue for the
    lock-file update instead of one failing). A stage whose
    lock entry were lost would only be re-run (and resume from its last checkpoint) by the final
    plain ``dvc repro``.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    from patchsplat.orchestrate import interrupts

    environment = {**(environment or os.environ), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def one(patch_id: str) -> int | None:
        try:
            return _run_dvc(("--wait-for-lock", "repro", "-s", f"train@{patch_id}"), workspace, environment,
                            f"train@{patch_id}")
        except interrupts.NotStarted:
            return None  # interrupted before this patch's turn came

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = dict(zip(patch_ids, pool.map(one, patch_ids)))
    if interrupts.interrupted.is_set():
        raise interrupts.NotStarted("interrupted")
    failed = [patch_id for patch_id, code in codes.items() if code != 0]
    if failed:
        raise InputError(f"dvc repro -s train@{failed[0]}", f"failed ({len(failed)} of {len(patch_ids)} patches failed: {', '.join(failed)})", kind="dvc_failed")


def planned_patch_ids(workspace: Path = Path(".")) -> list[str]:
    """The ids the split stage will produce with the current scene and params (plan only, nothing written)."""
    from patchsplat.colmap_io.arrays import read_model_arrays
    from patchsplat.config import load_params
    from patchsplat.scene_layout import locate_scene
    from patchsplat.scene_source import resolve_scene_dir
    from patchsplat.split import plan_split

    params = load_params(workspace / "params.yaml")
    layout = locate_scene(resolve_scene_dir(workspace / "data" / "scene"))
    from patchsplat.profiles import split_budget

    plan = plan_split(read_model_arrays(layout.model_dir), params.split, params.validate_.robust_percentile, str(layout.model_dir),
                      split_budget(params.train, params.split.megapixels_per_patch))
    return [patch.patch_id for patch in plan.patches]


def repro(workspace: Path = Path("."), extra_args: tuple[str, ...] = (), jobs: int = 1,
          times: StageTimes | None = None) -> SyncResult:
    """Bring the scene up to date, re-sync the patch ids with the split, then ``dvc repro`` everything.

    With ``jobs`` > 1 the patches are trained ``jobs`` at a time (after everything they need is
    reproduced), then the rest of the pipeline runs. Ends (also when a stage fails or an interrupt
    stops it) with a table of the stages that ran and their times (``times``: where the stages
    report them; a temporary file by default).
    """
    import time

    from patchsplat.console import STAGE_TIMES_ENV
    from patchsplat.orchestrate.dvc_steps import stage_environment
    from patchsplat.orchestrate.report import print_stage_times

    own_times = times is None
    times = times or StageTimes()
    # As the flow's stages get it: this interpreter's `python` first on PATH, unbuffered output (when
    # `patchsplat repro`'s output is a pipe, CI or a log file, the stages' lines still arrive as printed).
    environment = stage_environment({STAGE_TIMES_ENV: str(times.path)})
    started = time.perf_counter()
    try:
        _dvc("repro", "validate", workspace=workspace, environment=environment)
        result = sync_patch_ids(planned_patch_ids(workspace), workspace)
        if jobs > 1 and len(result.new_ids) > 1:
            from patchsplat.config import load_params
            from patchsplat.tracking import prepare_store

            _dvc("repro", "prepare", *extra_args, workspace=workspace, environment=environment)
            prepare_store(load_params(workspace / "params.yaml").tracking, workspace)
            _train_in_parallel(result.new_ids, jobs, workspace, environment)
        _dvc("repro", *extra_args, workspace=workspace, environment=environment)
    finally:
        print_stage_times(times.records(), time.perf_counter() - started, title="patchsplat repro")
        if own_times:
            times.close()
    return result
