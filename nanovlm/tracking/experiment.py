"""The MLflow experiment a run goes into: found by name, or created with the dashboard's tags.

    get_or_create_experiment(client, "smoke", tracking_uri)   # its id; created if missing, race-safe

Every experiment is created (or, made by an older version, completed) with the tags of
`nanovlm.dashboard`: the UI opens it on its runs, with a "Training curves" saved view. Artifacts of
a new experiment in a sqlite store go to `mlartifacts/` beside the database, since MLflow's default
is relative to the working directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nanovlm.dashboard import experiment_tags
from nanovlm.tracking.store import TrackingError, sqlite_path

if TYPE_CHECKING:
    from mlflow import MlflowClient


def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Look up the experiment, creating it if missing (another process may be creating it too)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        db = sqlite_path(tracking_uri)
        # A server (http...) decides where artifacts go for itself.
        location = (db.parent / "mlartifacts").as_uri() if db is not None else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=experiment_tags())
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)  # lost the race: use the winner's
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} is deleted (in {tracking_uri}); restore it with "
                            f"`mlflow experiments restore` or choose another name")
    # One made before these tags existed (or by hand) gets the missing ones; a kind or view
    # someone changed stays as it is.
    for key, value in experiment_tags().items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id
