"""Ctrl-C and SIGTERM: `patchsplat run` and `patchsplat repro` stop at once, cleanly, and the next run resumes.

What a user relies on (issue 10, item 6): the first Ctrl-C — SIGINT to the whole foreground process
group, as a terminal sends it — or a SIGTERM to the command alone stops it within seconds; no child
process is left; Prefect does not retry the interrupted patches; the console shows one line saying
what was interrupted and how to continue, no traceback and no event dumps; and the next run resumes
training from the checkpoints. Also (item 5): the training stage's progress lines reach `patchsplat
run`'s console while it trains, and a stage ends with its time.

The end-to-end tests share one small workspace (two patches, long training on tiny images) and run
in file order: each resumes what the previous one interrupted. The first runs `patchsplat run`
without PREFECT_API_URL, so Prefect's temporary server is started — the part a Ctrl-C used to kill;
the second against a Prefect server named by PREFECT_API_URL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import edit_params, small_workspace

STOP_WITHIN_SECONDS = 10  # the issue asks for about 5; a busy 2-core CI machine gets some slack
ROOT = Path(__file__).resolve().parents[1]


class Command:
    """A command started in a process group of its own (as a shell starts a foreground job), its output
    collected line by line with the time each line arrived."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, errors="replace", start_new_session=True)
        self.pgid = self.process.pid
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        """The first line from index ``after`` on matching ``pattern`` (fails when the command ends first)."""
        deadline = time.monotonic() + timeout
        seen = after
        with self._new_line:
            while True:
                for index in range(seen, len(self.lines)):
                    if (found := re.search(pattern, self.lines[index])) is not None:
                        self.found_at = index
                        return found
                seen = len(self.lines)
                if self.process.poll() is not None and seen == len(self.lines):
                    self.kill()
                    raise AssertionError(f"ended ({self.process.returncode}) before /{pattern}/:\n{self.text[-6000:]}")
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"no /{pattern}/ within {timeout} s:\n{self.text[-6000:]}")
                self._new_line.wait(0.5)

    def stopped_after(self, number: int, whole_group: bool) -> tuple[int, float]:
        """Send ``number`` (to the whole group, or to the command alone); its exit status and how long it took."""
        sent = time.monotonic()
        os.killpg(self.pgid, number) if whole_group else os.kill(self.process.pid, number)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running 60 s after signal {number}:\n{self.text[-6000:]}") from None
        seconds = time.monotonic() - sent
        time.sleep(0.3)  # the reader thread takes the last lines
        return code, seconds

    def kill(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _group_is_gone(pgid: int) -> bool:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _assert_clean_stop(command: Command, code: int, seconds: float, expected_code: int, again: str) -> str:
    """The shared promises: exit status, time, one closing line, no traceback/event dump/retry, no child left."""
    text = command.text
    assert code == expected_code, text[-6000:]
    assert seconds < STOP_WITHIN_SECONDS, f"took {seconds:.1f} s to stop:\n{text[-6000:]}"
    closing = [line for line in command.lines if line.startswith("interrupted: ")]
    assert len(closing) == 1, text[-6000:]
    assert f"run `{again}` again to resume" in closing[0] and "training of" in closing[0]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-6000:]
    # Prefect's event dumps were 2 kB lines; nothing here comes near that
    assert max(len(line) for line in command.lines) < 600, max(command.lines, key=len)[:600]
    for noise in ("EventsWorker", "Error logging to API", "AwaitingRetry", "Retrying", "Retry 1/", "Crash detected"):
        assert noise not in text, noise
    assert _group_is_gone(command.pgid), "a child process of the command is still running"
    return closing[0]


def _interrupted_steps(text: str) -> dict[str, int]:
    """Patch -> the step at which its training was interrupted (and its checkpoint saved), as the stage said."""
    return {patch: int(step) for patch, step in re.findall(r"train@(p\d+): training interrupted at step (\d+) of", text)}


def _resumes_where_it_stopped(command: Command, previous: str) -> None:
    """The command's training resumes each patch from the step the previous command interrupted it at."""
    stopped = _interrupted_steps(previous)
    assert stopped, previous[-6000:]
    patch, step = next(iter(stopped.items()))
    resumed = command.wait_for(rf"\[{patch}\] resuming from step (\d+)", timeout=400)
    assert int(resumed.group(1)) == step


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    workspace = small_workspace(tmp_path_factory.mktemp("interrupt"))

    def settings(params: dict) -> None:
        params["split"].update({"rows": 1, "cols": 2})
        params["patch_overrides"] = {"p0": {}, "p1": {}}
        # Long enough never to finish here; a held-out evaluation (which forces a progress line) and a
        # checkpoint every few steps, so the tests need not wait for the 15 s progress interval.
        params["train"].update({"steps": 5000, "eval_every": 10, "checkpoint_every": 10})
        # Retries allowed, so the test sees that an interrupted patch is not retried
        params["orchestration"].update({"max_concurrent_patches": 2, "patch_retries": 2, "retry_delay_seconds": 0})

    edit_params(workspace, settings)
    for command in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "workspace"]):
        subprocess.run(command, cwd=workspace, check=True)
    return workspace


@pytest.fixture(scope="module")
def environment(workspace, tmp_path_factory) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}  # Prefect's temporary server
    env.update({"PYTHONPATH": str(workspace / "src"),  # the stages run the copy's code, which DVC hashes
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "PATCHSPLAT_TRACKING": "0", "DVC_NO_ANALYTICS": "1", "COLUMNS": "200",
                "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "150"})
    return env


def _patchsplat(workspace: Path, environment: dict, *args: str) -> Command:
    return Command([sys.executable, "-m", "patchsplat.cli", *args], workspace, environment)


def _server_port(command: Command) -> int | None:
    found = re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", command.text)
    return int(found.group(1)) if found else None


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_ctrl_c_stops_patchsplat_run_at_once_without_retrying_the_patches(workspace, environment):
    run = _patchsplat(workspace, environment, "run")
    # The training stage's progress line reaches the flow's console while training runs (through DVC's
    # pipe and Prefect's log: unbuffered, not at the end).
    run.wait_for(r"\[p[01]\] step \d+/5000 \(", timeout=400)
    assert _server_port(run) is not None and _listening(_server_port(run)), "the flow used no temporary server"

    code, seconds = run.stopped_after(signal.SIGINT, whole_group=True)

    closing = _assert_clean_stop(run, code, seconds, 130, "patchsplat run")
    assert "(checkpoints kept in data/checkpoints)" in closing
    assert (workspace / "data/checkpoints/p0/last.pt").exists() or (workspace / "data/checkpoints/p1/last.pt").exists()
    # The Prefect server outlived the Ctrl-C (the flow recorded its end) and was stopped by the command
    assert "Finished in state Cancelled" in run.text
    assert not _listening(_server_port(run))
    # The closing table: every stage, the patches' prepare + train times, the total
    table = run.text[run.text.index("reconstruct: interrupted"):]
    for row in ("scene", "validate", "split", "p0 (prepare + train)", "p1 (prepare + train)", "merge", "mesh",
                "evaluate", "total"):
        assert row in table, row
    assert re.search(r"prepare \d+\.\d s, train \d+\.\d s", table)
    # every stage process ended with its time
    assert re.search(r"split done in \d+\.\d s", run.text) and re.search(r"prepare@p0 done in", run.text)
    _remember_output(workspace, run.text)


@pytest.mark.slow
def test_sigterm_to_patchsplat_run_alone_stops_it_and_the_next_run_resumes(workspace, environment, prefect_harness):
    """Against a Prefect server named by PREFECT_API_URL this time (the session's, shared with other tests)."""
    from prefect.settings import PREFECT_API_URL

    run = _patchsplat(workspace, {**environment, "PREFECT_API_URL": PREFECT_API_URL.value()}, "run")
    _resumes_where_it_stopped(run, _last_output(workspace))
    run.wait_for(r"\[p[01]\] step \d+/5000 \(", timeout=120, after=run.found_at)

    code, seconds = run.stopped_after(signal.SIGTERM, whole_group=False)  # e.g. `kill`, a batch system

    _assert_clean_stop(run, code, seconds, 143, "patchsplat run")
    _remember_output(workspace, run.text)


@pytest.mark.slow
def test_ctrl_c_stops_patchsplat_repro_and_the_next_repro_resumes(workspace, environment):
    repro = _patchsplat(workspace, environment, "repro", "--jobs", "2")
    _resumes_where_it_stopped(repro, _last_output(workspace))
    repro.wait_for(r"\[p[01]\] step \d+/5000 \(", timeout=120, after=repro.found_at)

    code, seconds = repro.stopped_after(signal.SIGINT, whole_group=True)

    _assert_clean_stop(repro, code, seconds, 130, "patchsplat repro")
    assert "ERROR: failed to reproduce" not in repro.text  # DVC's report of the interrupt: noise here
    # its closing table: the stages that ran, as they reported themselves
    table = repro.text[repro.text.index("patchsplat repro: stages run in"):]
    assert re.search(r"train@p[01]\s+.\s+interrupted\s+.\s+\d+\.\d", table), table


def _remember_output(workspace: Path, text: str) -> None:
    (workspace / ".last-output.txt").write_text(text)


def _last_output(workspace: Path) -> str:
    path = workspace / ".last-output.txt"
    return path.read_text() if path.exists() else ""


# ---------------------------------------------------------------- the pieces, fast


def test_the_closing_line_names_what_stopped_and_how_to_continue():
    from patchsplat.orchestrate.interrupts import describe

    assert describe(["train@p10", "train@p2", "train@p1"], "patchsplat run") == (
        "interrupted: training of p1, p2, p10 stopped (checkpoints kept in data/checkpoints); "
        "run `patchsplat run` again to resume")
    assert describe(["mesh"], "patchsplat repro") == "interrupted: mesh stopped; run `patchsplat repro` again to continue"
    assert describe([], "patchsplat run").startswith("interrupted: no stage was running;")


def test_a_signal_is_forwarded_to_each_child_group_and_the_command_raises_one_line():
    """interrupts.run in this process: the children get SIGINT (not the terminal's, ours), the work's own
    outcome is replaced by the closing line, exit status 128 + the signal."""
    from patchsplat.console import Interrupted
    from patchsplat.orchestrate import interrupts

    child_code = textwrap.dedent("""
        import signal, sys, time
        def stop(number, frame):
            print("child got", number, flush=True); sys.exit(130)
        signal.signal(signal.SIGINT, stop)
        print("ready", flush=True)
        time.sleep(30)
    """)
    seen: dict = {}

    def work() -> None:
        with interrupts.child([sys.executable, "-c", child_code], "train@p7", stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout.readline().strip() == "ready"
            seen["own_group"] = os.getpgid(child.pid) == child.pid  # a session of its own
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
            seen["said"] = child.stdout.readline().strip()
            seen["code"] = child.wait()
        with pytest.raises(interrupts.NotStarted):  # nothing new starts once interrupted
            interrupts.popen([sys.executable, "-c", "pass"], "mesh")

    started = time.monotonic()
    with pytest.raises(Interrupted) as interrupted:
        interrupts.run(work, "patchsplat run")
    assert time.monotonic() - started < 5
    assert seen == {"own_group": True, "said": f"child got {signal.SIGINT}", "code": 130}
    assert interrupted.value.exit_status == 128 + signal.SIGTERM
    assert str(interrupted.value).startswith("interrupted: training of p7 stopped")
    assert signal.getsignal(signal.SIGTERM) is not interrupts._on_signal  # handlers restored
    interrupts.reset()


STAGE_SCRIPT = """
import sys, time
import patchsplat.console
from patchsplat.console import guarded

patchsplat.console.HEARTBEAT_SECONDS = 0.5

def main():
    print("ready", flush=True)
    if sys.argv[1] == "sleep":
        time.sleep(30)
    if sys.argv[1] == "quiet":
        time.sleep(1.3)

guarded(main)
"""


def _stage_process(tmp_path: Path, mode: str, stage: str = "mesh") -> subprocess.Popen:
    script = tmp_path / "stage.py"
    script.write_text(STAGE_SCRIPT)
    env = {**os.environ, "DVC_STAGE": stage, "PATCHSPLAT_STAGE_RECORDS": str(tmp_path / "records.jsonl"),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, str(script), mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stage_stops_on_sigint_or_sigterm_with_one_line_and_its_status(tmp_path, number):
    stage = _stage_process(tmp_path, "sleep")
    assert stage.stdout.readline().strip() == "ready"
    stage.send_signal(number)
    out, err = stage.communicate(timeout=30)
    assert stage.returncode == 128 + number
    assert re.fullmatch(r"mesh: interrupted after \d+\.\d s\n", err), err
    assert "Traceback" not in out + err
    records = _records(tmp_path)
    assert [(r["stage"], r["outcome"]) for r in records] == [("mesh", "started"), ("mesh", "interrupted")]
    assert re.fullmatch(r"interrupted after \d+\.\d s", records[-1]["reason"]) and records[-1]["patch"] is None


def test_a_stage_ends_with_its_time(tmp_path):
    stage = _stage_process(tmp_path, "quick", stage="train@p3")
    out, err = stage.communicate(timeout=60)
    assert stage.returncode == 0, err
    assert re.search(r"^train@p3 done in \d+\.\d s$", out, re.MULTILINE), out
    records = _records(tmp_path)
    assert [(r["stage"], r["outcome"], r["patch"]) for r in records] == [("train@p3", "started", "p3"), ("train@p3", "done", "p3")]
    assert records[-1]["kind"] is None and records[-1]["seconds"] >= 0


def test_a_quiet_stage_says_it_is_still_running_when_its_output_is_a_pipe(tmp_path):
    stage = _stage_process(tmp_path, "quiet", stage="mesh")
    out, err = stage.communicate(timeout=60)
    assert stage.returncode == 0, err
    assert re.search(r"^mesh: still running \(\d+\.\d s\)$", out, re.MULTILINE), out
    assert re.search(r"^mesh done in 1\.\d s$", out, re.MULTILINE), out


def test_a_stage_interrupted_while_importing_leaves_quietly(tmp_path):
    """Ctrl-C while a stage still imports (torch alone takes seconds): one line, no traceback from inside an import."""
    script = tmp_path / "importing.py"
    script.write_text("import time\nimport patchsplat.console\nprint('ready', flush=True)\ntime.sleep(30)\n")
    env = {**os.environ, "DVC_STAGE": "train@p0", "PYTHONPATH": str(ROOT / "src")}
    stage = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert stage.stdout.readline().strip() == "ready"
    stage.send_signal(signal.SIGINT)
    out, err = stage.communicate(timeout=30)
    assert stage.returncode == 130 and err == "train@p0: interrupted while starting\n", err


def test_the_flow_summary_lists_every_stage_each_patch_and_the_total():
    from patchsplat.orchestrate.flow import FlowSummary
    from patchsplat.orchestrate.report import flow_rows

    def outcome(stage, seconds, ran=True, returncode=0, reason=None, interrupted=False):
        return {"stage": stage, "ran": ran, "seconds": seconds, "returncode": returncode, "reason": reason,
                "kind": None, "patch": stage.partition("@")[2] or None, "interrupted": interrupted}

    summary = FlowSummary("interrupted", ".", patch_ids=["p0", "p1", "p2"], stages=[
        outcome("scene", 1.0, ran=False), outcome("validate", 2.0), outcome("split", 3.0),
        outcome("prepare@p0", 1.5), outcome("train@p0", 20.0, returncode=255, reason="interrupted", interrupted=True),
        outcome("prepare@p1", 1.0), outcome("train@p1", 30.0),
        outcome("prepare@p2", 0.0, ran=False, returncode=130, reason="not started", interrupted=True)])
    rows = {row[0]: row[1:] for row in flow_rows(summary)}
    assert list(rows) == ["scene", "validate", "split", "p0 (prepare + train)", "p1 (prepare + train)",
                          "p2 (prepare + train)", "merge", "mesh", "evaluate"]
    assert rows["scene"] == ("up to date", "1.0", "")
    assert rows["p0 (prepare + train)"] == ("interrupted", "21.5", "prepare 1.5 s, train 20.0 s")
    assert rows["p1 (prepare + train)"] == ("ran", "31.0", "prepare 1.0 s, train 30.0 s")
    assert rows["p2 (prepare + train)"][0] == "not started"
    assert rows["merge"] == ("not run", "", "")


def test_pycolmap_does_not_take_sigterm_over(tmp_path):
    """Importing pycolmap installs glog's SIGTERM handler (a native stack dump, then abort): taken through
    patchsplat.colmap_library, the process keeps its own handler and stops with its one line."""
    script = tmp_path / "stop.py"
    script.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda number, frame: (print('stopped cleanly', flush=True), sys.exit(3)))\n"
        "from patchsplat.colmap_library import pycolmap\n"
        "pycolmap().CameraModelId\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 3 and "stopped cleanly" in out, (out, err)
    assert "stack trace" not in err and "Aborted" not in err
