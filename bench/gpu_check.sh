#!/usr/bin/env bash
# The GPU check in one shot (issue 10 item 7). Run THERE, on the device tool's GPU machine:
#
#   here, once:  bash bench/gpu_wheels.sh            # the wheels the image lacks -> bench/.wheels/ (~46 MiB)
#   then:        run(command="bash bench/gpu_check.sh", carry=["bench/.wheels"], timeout_s=560)
#
# What it does, each phase under its own `timeout` (a failure or a hang is reported and the next
# phase still runs; the exit status is non-zero at the end if any phase failed):
#   1. versions: nvidia-smi, nvcc, python3, torch + CUDA, the GPU (and its compute capability)
#   2. wheels:   bench/.wheels/*.whl -> /tmp/gpu_check_site (no network there), first on PYTHONPATH, then src/.
#                The image's torch is used; patchsplat is imported from src/, never pip-installed.
#   3. imports:  every module the tests and the benchmark need (a missing wheel shows here)
#   4. build:    gsplat's CUDA extension (JIT, torch.utils.cpp_extension), timed, explicitly, once;
#                the last 50 lines of its log on failure
#   5. tests:    the `gpu`-marked tests (tests/test_render.py, tests/test_strategies.py)
#   6. pilot:    bench/train_gpu.py --steps 300 (gives steps/s of both sides)
#   7. train:    bench/train_gpu.py at the most steps (<= 7000, the issue-4 figure) that the pilot's
#                rates say fit in the time left, with a 2x margin
# then a FIGURES block and $OUT/figures.json: build seconds, test counts, steps/s and held-out PSNR
# of patchsplat and of the gsplat simple_trainer reference, and their ratio.
#
# Files back in $OUT (4 of the tool's 8): gpu_check.log (everything printed), figures.json,
# gsplat_build.log, gpu_tests.xml. Without $OUT they go to bench/.work/gpu_check/.
#
# Settings (environment):
#   GPU_CHECK_BUDGET     seconds for the whole script (default 480: 8 minutes); phases are cut to fit
#   GPU_CHECK_STEPS      the main run's step count (default: chosen from the pilot, capped by ...)
#   GPU_CHECK_MAX_STEPS  ... this (default 7000)
#   GPU_CHECK_PILOT      the pilot's step count (default 300; 0 skips it, then GPU_CHECK_STEPS or 3000)
#   GPU_CHECK_PYTHON     the interpreter (default python3: the image's, with torch)
#   GPU_CHECK_WHEELS     the wheel folder (default bench/.wheels)
#   GPU_CHECK_CPU=1      a rehearsal of this script on a CPU machine with the project's venv:
#                        GPU_CHECK_CPU=1 GPU_CHECK_PYTHON=.venv/bin/python bash bench/gpu_check.sh
#                        (no wheels, no CUDA build, the gpu tests skip, train_gpu.py --cpu at a few steps)
set -u
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

CPU_MODE=${GPU_CHECK_CPU:-0}
PY=${GPU_CHECK_PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-bench/.wheels}
BUDGET=${GPU_CHECK_BUDGET:-480}
SITE=/tmp/gpu_check_site
if [ "$CPU_MODE" = 1 ]; then
    PILOT=${GPU_CHECK_PILOT:-5}
    MAX_STEPS=${GPU_CHECK_MAX_STEPS:-20}
else
    PILOT=${GPU_CHECK_PILOT:-300}
    MAX_STEPS=${GPU_CHECK_MAX_STEPS:-7000}
fi
STEPS=${GPU_CHECK_STEPS:-}
OUTDIR=${OUT:-$ROOT/bench/.work/gpu_check}
mkdir -p "$OUTDIR" "$ROOT/bench/.work"  # bench/.work: train_gpu.py's scene cache (ignored by git, so not carried)
WORKDIR=$(mktemp -d /tmp/gpu_check.XXXXXX)
DEADLINE=$(( $(date +%s) + BUDGET ))

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PATCHSPLAT_TRACKING=0 MPLBACKEND=Agg OMP_WAIT_POLICY=PASSIVE
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/gpu_check_torch_extensions}
# The interpreter's own bin folder first: torch's JIT build calls `ninja` (the image has it as a pip package).
PATH="$(dirname "$(command -v "$PY" || echo "$PY")"):$PATH"
[ -x /usr/local/cuda/bin/nvcc ] && PATH="$PATH:/usr/local/cuda/bin"
export PATH

FAILED=()
PHASES="$WORKDIR/phases.tsv"
: >"$PHASES"

left() { echo $(( DEADLINE - $(date +%s) )); }
banner() { printf '\n===== %s  [%s, %ss left]\n' "$1" "$(date +%H:%M:%S)" "$(left)"; }
# record NAME STATUS SECONDS [NOTE]
record() {
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$PHASES"
    [ "$2" = ok ] || FAILED+=("$1")
    printf -- '----- %s: %s (%ss)%s\n' "$1" "$2" "$3" "${4:+ - $4}"
}
# limit CAP RESERVE: seconds a phase may take: CAP, or less to leave RESERVE seconds for what follows
limit() { local t=$(( $(left) - $2 )); [ "$t" -gt "$1" ] && t=$1; echo "$t"; }
status_of() { case $1 in 0) echo ok ;; 124|137) echo timeout ;; *) echo "failed (exit $1)" ;; esac; }

# train_run LABEL STEPS CAP RESERVE: bench/train_gpu.py, output kept in $WORKDIR/LABEL.out
train_run() {
    local label=$1 steps=$2 t rc started
    t=$(limit "$3" "$4")
    banner "$label: bench/train_gpu.py --steps $steps (limit ${t}s)"
    if [ "$t" -lt 20 ]; then record "$label" "skipped: no time left" 0; return; fi
    local args=(--steps "$steps")
    [ "$CPU_MODE" = 1 ] && args+=(--cpu)
    started=$SECONDS
    timeout -k 10 "$t" "$PY" bench/train_gpu.py "${args[@]}" 2>&1 | tee "$WORKDIR/$label.out"
    rc=${PIPESTATUS[0]}
    grep '^{"reference"' "$WORKDIR/$label.out" | tail -1 >"$WORKDIR/$label.json"
    if [ "$rc" = 0 ] && [ ! -s "$WORKDIR/$label.json" ]; then
        record "$label" "failed: no figures printed" $(( SECONDS - started ))
    else
        record "$label" "$(status_of "$rc")" $(( SECONDS - started ))
    fi
    echo "$steps $(( SECONDS - started ))" >"$WORKDIR/$label.steps"
}

main() {
    echo "bench/gpu_check.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s, cpu rehearsal: $CPU_MODE"
    if git rev-parse --git-dir >/dev/null 2>&1; then
        echo "git: $(git rev-parse --short HEAD) + $(git status --porcelain --untracked-files=no | wc -l | tr -d ' ') changed tracked files"
    fi

    # ---------------------------------------------------------------- 1. versions
    banner "versions"
    uname -srm
    echo "cores: $(nproc); MAX_JOBS=$MAX_JOBS"
    if command -v nvidia-smi >/dev/null; then
        timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "nvidia-smi failed"
    else
        echo "nvidia-smi: not found"
    fi
    if command -v nvcc >/dev/null; then nvcc --version | tail -2; else echo "nvcc: not found"; fi
    echo "ninja: $(command -v ninja || echo 'not found') $(ninja --version 2>/dev/null)"
    echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
    echo "c++: $(c++ --version 2>/dev/null | head -1 || echo 'not found')"
    "$PY" -c 'import os, sysconfig; i = sysconfig.get_paths()["include"]; print("Python.h (the build needs it):", os.path.exists(os.path.join(i, "Python.h")), i)'

    # ---------------------------------------------------------------- 2. wheels
    banner "wheels"
    local started rc t
    started=$SECONDS
    if [ "$CPU_MODE" = 1 ]; then
        export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
        record wheels "ok" 0 "cpu rehearsal: the interpreter's own packages"
    elif ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
        record wheels "failed: no wheels in $WHEELS" 0 "run bench/gpu_wheels.sh on the CPU machine and carry bench/.wheels"
    else
        ls "$WHEELS"/*.whl | sed 's|.*/|  |'
        rm -rf "$SITE"
        timeout -k 5 120 "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
        rc=$?
        export PYTHONPATH="$SITE:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
        record wheels "$(status_of $rc)" $(( SECONDS - started ))
    fi
    echo "PYTHONPATH=$PYTHONPATH"

    # ---------------------------------------------------------------- 3. imports (+ torch, the GPU)
    banner "imports"
    started=$SECONDS
    timeout -k 5 120 "$PY" - "$WORKDIR/info.json" <<'PYEOF'
import importlib, json, sys
from importlib import metadata

info = {"python": sys.version.split()[0], "executable": sys.executable}
errors = []
try:
    import torch
except Exception as error:  # noqa: BLE001 - reported, the check goes on
    torch = None
    errors.append(f"torch: {type(error).__name__}: {error}")
else:
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
if torch is not None and torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                multiprocessors=props.multi_processor_count)
versions = {}
for dist in ("gsplat", "pycolmap", "pydantic", "pydantic-core", "typing-extensions", "plyfile", "trimesh", "numpy", "scipy",
             "rich", "pillow", "matplotlib", "pyyaml", "jaxtyping", "ninja", "packaging", "pytest", "pytest-timeout"):
    try:
        versions[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        versions[dist] = None
info["versions"] = versions
for module in ("numpy", "scipy", "PIL", "yaml", "rich", "pydantic", "pycolmap", "plyfile", "trimesh", "gsplat", "gsplat.strategy",
               "pytest", "pytest_timeout", "patchsplat.config", "patchsplat.demo", "patchsplat.split", "patchsplat.prepare",
               "patchsplat.render", "patchsplat.render.gsplat_backend", "patchsplat.train.loop", "patchsplat.train.strategies"):
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - reported, the check goes on
        errors.append(f"{module}: {type(error).__name__}: {error}")
info["import_errors"] = errors
for key, value in info.items():
    print(f"{key}: {value}")
with open(sys.argv[1], "w") as handle:
    json.dump(info, handle, indent=1)
sys.exit(1 if errors else 0)
PYEOF
    rc=$?
    record imports "$(status_of $rc)" $(( SECONDS - started ))
    local capability
    capability=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("capability", ""))' "$WORKDIR/info.json" 2>/dev/null)
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-${capability:-9.0}}
    echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR"

    # ---------------------------------------------------------------- 4. gsplat's CUDA extension
    if [ "$CPU_MODE" = 1 ]; then
        banner "build: skipped (cpu rehearsal)"
        record build ok 0 "cpu rehearsal: not built"
    else
        t=$(limit 420 60)
        banner "build: gsplat's CUDA extension (limit ${t}s; log: gsplat_build.log)"
        started=$SECONDS
        # A rerun on a machine still warm finds the build in TORCH_EXTENSIONS_DIR and only loads it.
        local cached=""
        ls "$TORCH_EXTENSIONS_DIR"/gsplat_cuda/gsplat_cuda.so >/dev/null 2>&1 && cached="already built: loaded only"
        VERBOSE=1 timeout -k 10 "$t" "$PY" - "$WORKDIR/build.json" "${cached:+cached}" >"$OUTDIR/gsplat_build.log" 2>&1 <<'PYEOF'
import json, sys, time

import torch  # not timed: only the extension's compile and load are

started = time.perf_counter()
from gsplat.cuda._backend import _C  # compiles gsplat/cuda/csrc/*.cu on first use (torch.utils.cpp_extension)

seconds = time.perf_counter() - started
if _C is None:
    sys.exit("gsplat found no CUDA toolkit: its extension was not built")
print(f"gsplat CUDA extension built and loaded in {seconds:.1f} s: {_C.__file__}")
with open(sys.argv[1], "w") as handle:
    json.dump({"build_seconds": round(seconds, 1), "module": _C.__file__, "cached": sys.argv[2] == "cached"}, handle)
PYEOF
        rc=$?
        if [ "$rc" = 0 ]; then
            tail -1 "$OUTDIR/gsplat_build.log"
        else
            echo "gsplat's build FAILED (exit $rc); the last 50 lines of its log:"
            tail -50 "$OUTDIR/gsplat_build.log"
        fi
        record build "$(status_of $rc)" $(( SECONDS - started )) "$cached"
    fi

    # ---------------------------------------------------------------- 5. the gpu tests
    t=$(limit 180 60)
    # Only the modules that hold gpu-marked tests (today tests/test_render.py and tests/test_strategies.py):
    # collecting the others would import what this machine lacks (DVC, Prefect, MLflow).
    local gpu_files
    gpu_files=$(grep -l 'mark\.gpu' tests/test_*.py | tr '\n' ' ')
    banner "tests: pytest -m gpu $gpu_files(limit ${t}s)"
    started=$SECONDS
    rm -f "$OUTDIR/gpu_tests.xml"
    # shellcheck disable=SC2086  # the file list splits on spaces (test file names have none)
    timeout -k 10 "$t" "$PY" -m pytest -m gpu -q -p no:cacheprovider --timeout 150 --junitxml="$OUTDIR/gpu_tests.xml" \
        ${gpu_files:-tests/test_render.py tests/test_strategies.py}
    rc=$?
    local counts
    counts=$("$PY" - "$OUTDIR/gpu_tests.xml" <<'PYEOF'
import sys
import xml.etree.ElementTree as ET

try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:  # noqa: BLE001 - no report: pytest did not finish
    print("0 0 0 0"); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
total = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors", "skipped")}
print(total["tests"] - total["failures"] - total["errors"] - total["skipped"], total["failures"], total["errors"], total["skipped"])
PYEOF
)
    echo "$counts" >"$WORKDIR/tests.counts"
    local passed skipped
    read -r passed _ _ skipped <<<"$counts"
    if [ "$rc" = 0 ] && [ "$CPU_MODE" != 1 ] && { [ "$passed" = 0 ] || [ "$skipped" != 0 ]; }; then
        record tests "failed: $passed passed, $skipped skipped (on a GPU every gpu test must run)" $(( SECONDS - started ))
    else
        record tests "$(status_of $rc)" $(( SECONDS - started )) "passed/failed/errors/skipped: $counts"
    fi

    # ---------------------------------------------------------------- 6. pilot training run
    if [ "$PILOT" -gt 0 ]; then
        train_run pilot "$PILOT" 150 60
    fi

    # ---------------------------------------------------------------- 7. the main training run
    local pilot_status
    pilot_status=$(awk -F '\t' '$1 == "pilot" { print $2 }' "$PHASES")
    if [ "$PILOT" -gt 0 ] && [ "$pilot_status" != ok ] && [ -z "$STEPS" ]; then
        STEPS=0  # a longer run of what failed or ran out of time would do no better: keep the device time
        echo "main run skipped: the pilot failed ($pilot_status)"
    fi
    if [ -z "$STEPS" ]; then
        STEPS=$("$PY" - "$WORKDIR" "$(left)" "$MAX_STEPS" "$PILOT" <<'PYEOF'
import json, sys
from pathlib import Path

work, left, cap, pilot = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
try:
    figures = json.loads((work / "pilot.json").read_text())
    steps, wall = map(float, (work / "pilot.steps").read_text().split())
    per_step = 1 / figures["reference"]["steps_per_second"] + 1 / figures["patchsplat"]["steps_per_second"]
except Exception:  # noqa: BLE001 - no pilot figures: a fixed size
    print("no pilot figures: a fixed size", file=sys.stderr)
    print(min(cap, 3000) if pilot == 0 else min(cap, 1000)); sys.exit()
fixed = max(wall - steps * per_step, 0.0)  # start-up, data, evaluation, outputs
usable = left - 30 - fixed                 # 30 s for the figures and the hand-back
chosen = int(0.5 * usable / per_step)      # 2x margin: Gaussians grow with densification, steps slow down
chosen = min(cap, chosen // 100 * 100 if chosen >= 100 else chosen)
print(chosen if chosen > steps else 0)     # no longer than the pilot: nothing to add
PYEOF
)
        echo "main run: $STEPS steps (from the pilot's rates and $(left)s left; cap $MAX_STEPS)"
    fi
    if [ "${STEPS:-0}" -gt 0 ]; then
        train_run train "$STEPS" 100000 15
    elif [ "$pilot_status" = ok ]; then
        record train "skipped: too little time left" 0
    else
        record train "skipped: the pilot did not finish ($pilot_status)" 0
    fi

    # ---------------------------------------------------------------- figures
    banner "FIGURES"
    "$PY" - "$WORKDIR" "$OUTDIR/figures.json" "$CPU_MODE" <<'PYEOF'
import json, sys
from pathlib import Path

work, target, cpu = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"


def load(name):
    try:
        return json.loads((work / name).read_text())
    except Exception:  # noqa: BLE001 - the phase did not produce it
        return None


info = load("info.json") or {}
build = load("build.json") or {}
phases = {}
for line in (work / "phases.tsv").read_text().splitlines():
    name, status, seconds, note = (line.split("\t") + [""] * 4)[:4]
    phases[name] = {"status": status, "seconds": int(seconds), **({"note": note} if note else {})}
try:
    passed, failed, errors, skipped = map(int, (work / "tests.counts").read_text().split())
    tests = {"passed": passed, "failed": failed, "errors": errors, "skipped": skipped}
except Exception:  # noqa: BLE001
    tests = None


def training(label):
    figures = load(f"{label}.json")
    if not figures:
        return None
    steps, wall = (work / f"{label}.steps").read_text().split()
    ref, ours = figures["reference"], figures["patchsplat"]
    return {
        "steps": int(steps), "wall_seconds": int(wall),
        "reference_steps_per_second": round(ref["steps_per_second"], 2),
        "patchsplat_steps_per_second": round(ours["steps_per_second"], 2),
        "throughput_ratio": round(ours["steps_per_second"] / ref["steps_per_second"], 3),
        "reference_heldout_psnr": round(ref["heldout_psnr"], 3),
        "patchsplat_heldout_psnr": round(ours["heldout_psnr"], 3),
        "psnr_gap_db": round(ours["heldout_psnr"] - ref["heldout_psnr"], 3),
        "reference_gaussians": ref["gaussians"], "patchsplat_gaussians": ours["gaussians"],
    }


result = {
    "cpu_rehearsal": cpu,
    "gpu": info.get("gpu"), "capability": info.get("capability"), "python": info.get("python"),
    "torch": info.get("torch"), "torch_cuda": info.get("torch_cuda"), "versions": info.get("versions"),
    "gsplat_build_seconds": build.get("build_seconds"), "gsplat_build_cached": build.get("cached"),
    "gpu_tests": tests,
    "train_pilot": training("pilot"),
    "train": training("train"),
    "phases": phases,
    "failed": [name for name, phase in phases.items() if phase["status"] != "ok"],
}
target.write_text(json.dumps(result, indent=1) + "\n")

print(f"gpu:                 {result['gpu']} (capability {result['capability']}), torch {result['torch']} CUDA {result['torch_cuda']}")
print(f"gsplat build:        {result['gsplat_build_seconds']} s{' (cached: loaded only)' if build.get('cached') else ''}")
print(f"gpu tests:           {tests}")
for label in ("train_pilot", "train"):
    run = result[label]
    if run is None:
        print(f"{label + ':':<20} no figures")
        continue
    print(f"{label + ':':<20} {run['steps']} steps ({run['wall_seconds']} s for both sides)")
    print(f"  steps/s            reference {run['reference_steps_per_second']}, patchsplat {run['patchsplat_steps_per_second']}"
          f" -> {run['throughput_ratio']}x (target >= 0.95x)")
    print(f"  held-out PSNR      reference {run['reference_heldout_psnr']} dB, patchsplat {run['patchsplat_heldout_psnr']} dB"
          f" -> {run['psnr_gap_db']:+} dB (target within 0.1 dB)")
    print(f"  Gaussians          reference {run['reference_gaussians']}, patchsplat {run['patchsplat_gaussians']}")
for name, phase in phases.items():
    print(f"phase {name:<8} {phase['status']} ({phase['seconds']} s){' - ' + phase['note'] if 'note' in phase else ''}")
print(f"figures: {target}")
PYEOF
    echo "total: ${SECONDS}s of a ${BUDGET}s budget"
    if [ "${#FAILED[@]}" -gt 0 ]; then
        echo "GPU CHECK FAILED: ${FAILED[*]}"
        return 1
    fi
    echo "GPU CHECK PASSED"
}

main 2>&1 | tee "$OUTDIR/gpu_check.log"
status=${PIPESTATUS[0]}
rm -rf "$WORKDIR"
exit "$status"
