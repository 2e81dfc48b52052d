"""CPU, memory, disk, network and GPU use of the machine, logged by MLflow as `system/...` metrics of a run.

    monitor = start_system_metrics(run_id, tracking_uri, resumed=False, requested=None)  # None if off
    ...; monitor.finish()

MLflow's public switch is `mlflow.start_run(log_system_metrics=True)`, which needs the fluent API's
global active run; runs here are made with an explicit client (see mlflow_tracker.py), so the monitor
that `start_run` would start is started here by run id. It is MLflow's internal class: a failure is a
warning, since losing system metrics must not stop training.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def system_metrics_enabled(requested: bool | None) -> bool:
    """`requested`, or when None: psutil is installed and MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is not false."""
    has_psutil = importlib.util.find_spec("psutil") is not None
    if requested is None:
        env = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower()
        return has_psutil and env not in ("false", "0")
    if requested and not has_psutil:
        log.warning("system metrics need psutil, which is not installed: not logging them")
        return False
    return requested


def start_system_metrics(run_id: str, tracking_uri: str, resumed: bool, requested: bool | None) -> Any:
    """MLflow's `SystemMetricsMonitor` for the run, started (stop it with `.finish()`); None when off."""
    if not system_metrics_enabled(requested):
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as e:
        log.warning("could not start MLflow system metrics: %s", e)
        return None
