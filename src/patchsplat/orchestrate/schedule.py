"""Serving the ``reconstruct`` flow on a schedule (``patchsplat serve --cron``).

``flow.serve`` registers a deployment with the Prefect API and runs its scheduled flow runs in
this process until it is stopped. Against a Prefect server (``PREFECT_API_URL``) the schedule,
the runs and their logs are visible in its UI; without one Prefect starts a temporary local server
that lives as long as ``serve`` does (see the README).
"""

from __future__ import annotations

from pathlib import Path

from patchsplat.errors import InputError
from patchsplat.workspace import Workspace


def check_cron(cron: str, timezone: str | None = None) -> None:
    """A one-line error for a cron expression (or time zone) Prefect would refuse."""
    from pydantic import ValidationError
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as error:
        problem = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise InputError("--cron" if "cron" in problem.lower() else "--timezone", problem, kind="bad_schedule") from None


def deployment_name(workspace: Path) -> str:
    return f"patchsplat-{workspace.resolve().name}"


def build_deployment(workspace: Path, cron: str, name: str | None = None, timezone: str | None = None):
    """The deployment ``serve`` registers: the flow for this workspace, on ``cron``."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Schedule

    from patchsplat.orchestrate.flow import reconstruct

    check_cron(cron, timezone)
    layout = Workspace(workspace)
    if not layout.params_file.exists() or not layout.dvc_yaml.exists():
        raise InputError(workspace, "not a patchsplat workspace (params.yaml and dvc.yaml expected)", kind="bad_workspace")
    from patchsplat.config import load_params

    load_params(layout.params_file)  # bad params: one line now, not a failed run at the first scheduled time
    return reconstruct.to_deployment(
        name=name or deployment_name(workspace),
        schedules=[Schedule(cron=cron, timezone=timezone)],
        parameters={"workspace": str(workspace.resolve())},
        description=f"patchsplat pipeline of {workspace.resolve()} on '{cron}'",
        tags=["patchsplat"],
        # By module, not by file path: a workspace made by `patchsplat init` holds no patchsplat source.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve(workspace: Path, cron: str, name: str | None = None, timezone: str | None = None) -> None:
    """Serve the flow on ``cron`` until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(build_deployment(workspace, cron, name, timezone))
