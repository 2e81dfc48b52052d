"""Experiment tracking: the small interface the training loop logs through, and its MLflow backend.

    with MLflowTracker.start("smoke", run_name="siglip-smollm") as tracker:
        tracker.log_params({"train.lr_projector": 5e-3, "model.language_model": "smollm"})
        for step in range(steps):
            tracker.log_metrics({"train/loss": loss}, step=step)   # collected, stored in the background
        tracker.flush()                                            # all stored: safe to save a checkpoint
    # normal exit -> FINISHED, an exception -> FAILED, Ctrl-C or SIGTERM -> KILLED

    tracker = NullTracker()                   # same interface, does nothing (tests, DDP ranks > 0)
    mark_orphans_killed("smoke")              # runs left RUNNING by a SIGKILLed process -> KILLED

One job per module:
    protocol.py        Tracker (what train() sees), NullTracker, TERMINAL_STATUSES
    mlflow_tracker.py  MLflowTracker: start / resume a run, params, tags, metrics (async), artifacts, status
    store.py           default_tracking_uri(), the sqlite file and its creation lock, check_server, open_client
    experiment.py      get_or_create_experiment(): found by name or created with the dashboard's tags
    inputs.py          dataset_input(): the data a run read, as an MLflow run input
    orphans.py         the host / pid tags, mark_orphans_killed()
    signals.py         SIGTERM -> Terminated while a run is open (ends it KILLED)
    system_metrics.py  MLflow's system metrics monitor for a run
The package is the only place in `nanovlm/` that imports mlflow, and it does so lazily, inside
functions, so `import nanovlm.tracking` stays cheap.
"""

from nanovlm.tracking.experiment import get_or_create_experiment
from nanovlm.tracking.inputs import dataset_input
from nanovlm.tracking.mlflow_tracker import MLflowTracker
from nanovlm.tracking.orphans import HOST_TAG, PID_TAG, mark_orphans_killed
from nanovlm.tracking.protocol import TERMINAL_STATUSES, NullTracker, Tracker
from nanovlm.tracking.signals import Terminated
from nanovlm.tracking.store import TrackingError, check_server, default_tracking_uri, open_client

__all__ = ["HOST_TAG", "PID_TAG", "TERMINAL_STATUSES", "MLflowTracker", "NullTracker", "Terminated", "Tracker",
           "TrackingError", "check_server", "dataset_input", "default_tracking_uri", "get_or_create_experiment",
           "mark_orphans_killed", "open_client"]
