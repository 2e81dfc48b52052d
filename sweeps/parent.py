"""The sweep's MLflow parent run: one per study, its trials' runs nested under it.

    with attach_parent(settings, study, created) as parent:   # an MLflowTracker
        ...

The worker that creates the study starts the parent run and stores its id as a study attribute;
other workers and later restarts reopen that run (waiting up to PARENT_WAIT_S for a creator that is
still starting it). The creator also saves a view of the runs page, "Sweep <study>": the parent with
its trials nested under it, the searched parameters and the metric as columns, a parallel-coordinates
chart; its link is logged and ends the sweep's summary.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from nanovlm import dashboard
from nanovlm import metrics as metric_names
from nanovlm.tracking import MLflowTracker
from sweeps.names import ATTR_PARENT, TAG_ROLE, TAG_STATE, TAG_STUDY
from sweeps.settings import SweepSettings

log = logging.getLogger("sweeps")
PARENT_WAIT_S = 120  # how long a worker waits for the study's creator to make the parent run


def view_id(study_name: str) -> str:
    """The sweep's saved view in the MLflow UI (a tag key: no = , + in it)."""
    return "sweep-" + re.sub(r"[^\w.-]", "_", study_name)


def _sweep_view(settings: SweepSettings) -> str:
    """The runs page for one sweep: the parent and its nested trials, searched parameters as columns."""
    params = [f"train.{name}" for name in settings.space]  # as the trials log them (flattened config)
    loss = [m for m in (metric_names.VAL_LOSS, metric_names.TRAIN_LOSS) if m != settings.metric]
    columns = [*map(dashboard.param_column, params), dashboard.metric_column(settings.metric),
               dashboard.metric_column(f"best/{settings.metric}"), dashboard.tag_column(TAG_STATE)]  # best/...: the parent's
    return dashboard.runs_view(f"Sweep {settings.study_name}", {"Sweep": [settings.metric], "Loss": loss}, columns=columns,
                       search_filter=f"tags.`{TAG_STUDY}` = '{settings.study_name}'",
                       parallel=(params, [settings.metric]))


def _start_parent(settings: SweepSettings, study: Any) -> MLflowTracker:
    # No system metrics on the parent: each trial's run records its own, and two monitors would double them.
    tracker = MLflowTracker.start(settings.base.experiment, settings.study_name, tracking_uri=settings.tracking_uri,
                                  tags={TAG_ROLE: "parent", TAG_STUDY: settings.study_name,
                                        "preset": settings.base.preset}, system_metrics=False)
    tracker.log_params(settings.description())
    study.set_user_attr(ATTR_PARENT, tracker.run_id)
    link = tracker.save_view(view_id(settings.study_name), _sweep_view(settings), charts=False)
    log.info("MLflow parent run %s for study %s; its trials in the MLflow UI: %s", tracker.run_id,
             settings.study_name, link)
    return tracker


def attach_parent(settings: SweepSettings, study: Any, created: bool) -> MLflowTracker:
    """The study's parent run: made by the worker that created the study, reopened by the others."""
    from mlflow.exceptions import MlflowException

    if created:
        return _start_parent(settings, study)
    deadline = time.monotonic() + PARENT_WAIT_S
    while ATTR_PARENT not in study.user_attrs:  # the creator sets it right after creating the study
        if time.monotonic() > deadline:
            log.warning("study %s has no MLflow parent run after %d s (its creator died?): starting one",
                        settings.study_name, PARENT_WAIT_S)
            return _start_parent(settings, study)
        time.sleep(0.5)
    run_id = study.user_attrs[ATTR_PARENT]
    try:
        return MLflowTracker.start(settings.base.experiment, settings.study_name, run_id=run_id,
                                   tracking_uri=settings.tracking_uri, system_metrics=False)
    except MlflowException as e:
        log.warning("the study's parent run %s is not in %s (%s): starting a new one", run_id,
                    settings.tracking_uri, e.error_code)
        return _start_parent(settings, study)
