"""Orchestration: the Prefect flow over the DVC pipeline, its MLflow parent run, schedules and sweeps."""

import os

# The temporary Prefect server would try to send usage telemetry on every start; this machine's
# pipeline must not reach out to the internet (and offline it only logs an error).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
