"""How long torch's OpenMP threads spin before they sleep: patchsplat's short spin unless the user says otherwise.

libgomp reads its settings once, when torch loads it, so patchsplat sets them at import, before torch
(src/patchsplat/__init__.py; bench/RESULTS.md, issue 15, for why 5,000 spins and not GNU OpenMP's 300,000 or none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

PROBE = ("import json, os, patchsplat; "
         "print(json.dumps({name: os.environ.get(name) for name in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')}))")


def _settings_after_import(**given: str) -> dict:
    environment = {name: value for name, value in os.environ.items() if name not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    environment.update(given, PYTHONPATH=str(REPO_ROOT / "src"))
    result = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.parametrize(("given", "expected"), [
    ({}, {"GOMP_SPINCOUNT": "5000", "OMP_WAIT_POLICY": None}),                  # the default: a short spin
    ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": "PASSIVE"}),  # the user's policy
    ({"GOMP_SPINCOUNT": "0"}, {"GOMP_SPINCOUNT": "0", "OMP_WAIT_POLICY": None}),   # the user's spin count
])
def test_openmp_wait_defaults_to_a_short_spin_and_keeps_the_users_setting(given, expected):
    assert _settings_after_import(**given) == expected
