"""The runs of some MLflow experiments as one pandas frame: what the size table reads.

    frame, missing = load_runs(["profile", "nanovlm"], "sqlite:////abs/path/mlflow.db")
    run_value(frame.iloc[0], "metrics.params/total")    # a run's value, None where it logged none

The frame is `mlflow.search_runs`'s (output_format="pandas"): one row per active run with run_id,
experiment_id, status, start_time (a UTC timestamp), end_time, artifact_uri, and one column per key
named `metrics.<key>` (the latest value, NaN where the run logged none), `params.<key>` and
`tags.<key>` (None where unset). Added here: `experiment` (the experiment's name) and `run_name`.
Rows are newest first, which is what "the newest run" means everywhere in `reports.rows`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd

# The columns of a store without runs (mlflow.search_runs gives these for an empty search).
INFO_COLUMNS = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time"]


def run_value(run: pd.Series | None, column: str) -> Any:
    """`run[column]`, or None when there is no run, no such column, or a missing value (None, NaN)."""
    if run is None or column not in run.index:
        return None
    cell = run[column]
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    return cell


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """`mlflow.search_runs` has no tracking_uri argument and reads the global one: point it at `uri` for
    the call, then put back what was there. `set_tracking_uri` also writes $MLFLOW_TRACKING_URI (for
    subprocesses), which `nanovlm.tracking.default_tracking_uri` reads, so that is put back too."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None if previous in (None, env) else previous)  # None: unset, as before
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def load_runs(experiments: list[str], tracking_uri: str) -> tuple[pd.DataFrame, list[str]]:
    """All active runs of `experiments` (names) as one frame, newest first (see the module docstring),
    and the names of the experiments that do not exist or are deleted."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found: dict[str, str] = {}  # id -> name
    missing = []
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            missing.append(name)
        else:
            found[experiment.experiment_id] = name
    if found:  # with no ids, search_runs would read the default experiment instead
        with _global_tracking_uri(tracking_uri):
            # Pages through every run (up to search_runs' max_results, 100000).
            frame = mlflow.search_runs(experiment_ids=list(found), output_format="pandas")
    else:
        frame = pd.DataFrame(columns=INFO_COLUMNS)
    frame.insert(1, "experiment", frame["experiment_id"].map(found))
    frame.insert(2, "run_name", frame["tags.mlflow.runName"] if "tags.mlflow.runName" in frame else None)
    return frame.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True), missing
