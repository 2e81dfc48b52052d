"""The names that tie a sweep together: Optuna study and trial attributes, and MLflow run tags.

    from sweeps.names import TAG_STUDY, TAG_TRIAL
    client.search_runs([...], filter_string=f"tags.`{TAG_STUDY}` = 'my-study'")

Other workers, later restarts, `sweeps/report.py` and the MLflow UI's saved view find a sweep's
runs and trials through these keys, so they are written in one place.
"""

from __future__ import annotations

# On the Optuna study
ATTR_PARENT = "mlflow_parent_run_id"  # the sweep's MLflow parent run, for workers that join later
ATTR_METRIC = "metric"
ATTR_SPACE = "space"

# On each Optuna trial
ATTR_RUN = "mlflow_run_id"  # the trial's MLflow run
ATTR_WORKER = "worker"  # host:pid that ran the trial
ATTR_FAIL_REASON = "fail_reason"  # the one-line reason a trial failed on a user error

# On MLflow runs
TAG_ROLE = "sweep.role"  # "parent" or "trial"
TAG_STUDY = "sweep.study_name"
TAG_TRIAL = "sweep.trial_number"
TAG_STATE = "sweep.trial_state"  # COMPLETE, PRUNED, FAIL (Optuna's names)
TAG_RETRIED_FROM = "sweep.retried_from"
TAG_FAIL_REASON = "sweep.fail_reason"  # the same reason as ATTR_FAIL_REASON
TAG_PRUNED_REASON = "sweep.pruned_reason"
