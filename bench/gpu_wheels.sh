#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI), before `bench/gpu_check.sh` is run on the GPU machine.
#
# Downloads into bench/.wheels/ (ignored by git; it travels with the device tool's `carry`) the
# wheels that the GPU machine's image lacks for what bench/gpu_check.sh runs: the `gpu`-marked tests
# (tests/test_render.py, tests/test_strategies.py, their conftest.py) and bench/train_gpu.py.
# Found by tracing every module those load on a CPU run (tracking off, PATCHSPLAT_TRACKING=0, so
# no MLflow; no Prefect, DVC or ruamel either) and taking away the packages the image has (the
# device notes' KINDS.md list: torch 2.11, numpy, scipy, rich, pillow, matplotlib, pyyaml, tqdm,
# packaging, jaxtyping, ninja, pytest, pytest-timeout, networkx, sympy, ...).
#
# Target: CPython 3.12 on x86-64 Linux (the GPU machine's python3). torch is NOT downloaded: the
# machine's torch 2.11 + CUDA 13 is used (pyproject's torch==2.13.0 pin is for the CPU machines),
# so patchsplat itself is imported from src/ (PYTHONPATH), never pip-installed there.
#
#   bash bench/gpu_wheels.sh          # then: run(command="bash bench/gpu_check.sh", carry=["bench/.wheels"])
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=bench/.wheels
# Same versions as the project's pins / its .venv, one version of each (two would stop the install).
WHEELS=(
    gsplat==1.5.3              # py3-none-any: CUDA sources, compiled on the GPU machine at first use
    pycolmap==4.2.1
    pydantic==2.14.3
    pydantic-core==2.50.4      # exactly the one pydantic 2.14.3 requires
    annotated-types==0.8.0     # pydantic
    typing-inspection==0.4.5   # pydantic
    typing-extensions==4.16.0  # pydantic-core needs a recent one; the image's version is unknown
    plyfile==1.1.5             # patchsplat.splat_io
    trimesh==5.2.0             # imported with patchsplat's demo scene / mesh helpers
)

PYTHON=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi

rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
for spec in "${WHEELS[@]}"; do
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none "${platforms[@]}" \
        -d "$DEST" "$spec"
done

count=$(ls "$DEST"/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
    echo "expected ${#WHEELS[@]} wheels in $DEST, found $count" >&2
    exit 1
fi
echo "wheels in $DEST:"
ls -l "$DEST"/*.whl | awk '{printf "  %8.1f KiB  %s\n", $5 / 1024, $9}'
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
awk -v b="$total" 'BEGIN { printf "total: %.1f MiB (the device tool carries at most 64 MiB with the working tree)\n", b / 1048576 }'
if ! git check-ignore -q "$DEST/x.whl"; then
    echo "warning: $DEST is not ignored by git: add it to .gitignore, or the wheels travel as untracked files" >&2
fi
