"""The Prefect flow ``reconstruct`` (validate -> split -> train per patch -> merge -> mesh -> evaluate).

Thin on purpose: the flow lives in :mod:`patchsplat.orchestrate.flow`. Run it with
``patchsplat run`` (or ``python flows/reconstruct.py [WORKSPACE]``), serve it on a schedule with
``patchsplat serve --cron "0 2 * * *"``, or deploy this file's ``reconstruct`` with Prefect's own
tools (``prefect deploy flows/reconstruct.py:reconstruct``).
"""

import sys

from patchsplat.console import guarded
from patchsplat.orchestrate.flow import reconstruct, run_pipeline

__all__ = ["reconstruct"]

if __name__ == "__main__":
    guarded(lambda: run_pipeline(workspace=sys.argv[1] if len(sys.argv) > 1 else "."))
