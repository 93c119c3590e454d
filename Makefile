# The two commands the README opens with:
#   make demo   set up .venv and run the whole pipeline on the built-in demo scene (dvc repro)
#   make test   set up .venv and run the test suite
# Both work on a fresh clone with nothing but python3 (>= 3.10) on the PATH.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# DVC and MLflow must not try to reach the internet from this pipeline.
export DVC_NO_ANALYTICS := 1
export MLFLOW_ENABLE_TELEMETRY := false
export DO_NOT_TRACK := 1

.PHONY: setup demo test bench clean-demo wheel deps browser js-readers

setup: $(STAMP)

# torch goes first and alone, pinned: it is the CPU build on the project's machines, while a looser
# spec asked for by another package would pull several GB of CUDA wheels.
$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV) (first time: a few minutes; log in $(VENV)/pip.log)"
	@$(BIN)/python -m pip install --disable-pip-version-check torch==2.13.0 >$(VENV)/pip.log 2>&1 \
	  || { tail -n 30 $(VENV)/pip.log; exit 1; }
	@$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]' >>$(VENV)/pip.log 2>&1 \
	  || { tail -n 30 $(VENV)/pip.log; exit 1; }
	@# The native CPU kernels (src/patchsplat/render/native): compiled once here (about a minute) rather than
	@# by the first training run. Without a C++ compiler training still works, on the slower pure-torch loop.
	@$(BIN)/python -m patchsplat.render.native >>$(VENV)/pip.log 2>&1 \
	  && tail -n 1 $(VENV)/pip.log \
	  || echo "native CPU kernels not built (see $(VENV)/pip.log): CPU training uses the pure-torch ones, ~2x slower"
	@touch $(STAMP)

demo: setup
	patchsplat repro
	patchsplat summary

# Two pytest workers, each test file on one of them (module fixtures are built once): the suite is mostly
# single-threaded end-to-end runs, so this halves it on 2 cores (21 -> 14 min, bench/RESULTS.md). One test:
# .venv/bin/python -m pytest tests/test_x.py -k name (no workers). The slowest files start first
# (tests/conftest.py, SLOWEST_FILES_FIRST), so that no long file starts last. Two workers share the 2 cores, so
# their OpenMP threads sleep when they wait, never spin (see src/patchsplat/__init__.py).
test: setup browser js-readers
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# tests/test_view.py loads `patchsplat view` in Debian's Chromium (driven by playwright, which downloads no
# browser): installed with apt-get when missing and this is root or has sudo; otherwise that test skips, saying so.
browser:
	@test -x /usr/bin/chromium || { \
	  as_root=; [ "$$(id -u)" = 0 ] || as_root="sudo -n"; \
	  if command -v apt-get >/dev/null && { [ -z "$$as_root" ] || sudo -n true 2>/dev/null; }; then \
	    echo "installing Debian's chromium for tests/test_view.py (log in $${TMPDIR:-/tmp}/patchsplat-apt.log)"; \
	    { $$as_root apt-get update -q && $$as_root apt-get install -y -q chromium; } >"$${TMPDIR:-/tmp}/patchsplat-apt.log" 2>&1; \
	  fi; \
	  test -x /usr/bin/chromium || echo "chromium not installed (apt-get needs root or sudo): tests/test_view.py's browser test will skip"; }

# The npm readers tests/test_export.py checks the exports with (@playcanvas/splat-transform, the Khronos glTF
# validator), at the versions tests/js/package-lock.json pins. Without npm those tests skip, saying why.
JS_STAMP := tests/js/node_modules/.installed
js-readers: $(JS_STAMP)

$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	@if command -v npm >/dev/null; then \
	  npm ci --prefix tests/js --ignore-scripts --no-audit --no-fund --loglevel=error && touch $(JS_STAMP); \
	else echo "npm not found: tests/test_export.py will skip its checks against npm readers (apt-get install nodejs npm)"; fi

# A wheel that works alone (dist/): it carries the pipeline definition (setup.py).
wheel: setup
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation --disable-pip-version-check -w dist .

# Rewrite dvc.yaml's generated code dependencies after changing what a stage imports.
deps: setup
	$(BIN)/python -m patchsplat.pipeline_deps --write

bench: setup
	$(BIN)/python bench/validate_scale.py
