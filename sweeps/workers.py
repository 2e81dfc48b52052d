"""Many workers on one study: who runs which trial, and what happens to a dead worker's trial.

    run_share(study, objective, settings, target, after_trial=...)   # this worker's trials, until done
    reconcile(study, client)                                          # MLflow runs of failed trials -> FAIL

Every worker (process, machine) runs the same command on the same storage and study name.
- **n_trials is the study's total** of finished trials (complete or pruned), counted in the storage:
  restarting the command resumes the sweep without redoing what is done, and N workers share the
  N trials (at most one extra trial per extra worker when two ask at the same instant). A worker
  leaves when the study has them all; while the last ones run elsewhere it waits, so that it can
  retry them if their worker turns out to be dead.
- **A killed worker loses only its running trial.** Storages beat a heartbeat for running trials;
  before each trial a worker fails trials silent for `grace_period` s and Optuna's retry callback
  (sweeps/storage.py) queues a copy with the same parameters, which the next free worker runs
  first. A trial stopped by Ctrl-C or SIGTERM (a preempted job) is queued again the same way, at
  once. Completed trials are never touched.
- Trials run in the worker's process, one at a time (a DDP trial would hang its other ranks when
  rank 0 is pruned); parallelism comes from workers.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable

import optuna

from sweeps import storage as sweep_storage
from sweeps.names import ATTR_RUN, TAG_STATE, TAG_TRIAL
from sweeps.settings import SweepSettings

if TYPE_CHECKING:
    from sweeps.objective import Objective

log = logging.getLogger("sweeps")
TrialState = optuna.trial.TrialState


def worker_id() -> str:
    """host:pid, recorded on each trial this worker runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial this one is a retry of (the first, for a retry of a retry), else None."""
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)  # Optuna < 4.9 has only the old name
        return (retry or optuna.storages.RetryFailedTrialCallback).retried_trial_number(trial)


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    found: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        found[t.state.name] = found.get(t.state.name, 0) + 1
    return found


def _fail_stale(study: optuna.Study) -> None:
    """A dead worker's trial -> FAIL, and (the storage's callback) a WAITING retry of it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _requeue(study: optuna.Study, number: int | None, max_retry: int) -> None:
    """Queue a copy of an interrupted trial, as a heartbeat failure would: the next worker runs it."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is not None and trial.state == TrialState.FAIL:
        sweep_storage.retry_callback(max_retry)[1](study, trial)
        log.info("trial %d interrupted: queued again for the next worker", number)


def run_share(study: optuna.Study, objective: Objective, settings: SweepSettings, target: int,
              after_trial: Callable[[], None]) -> None:
    """Run trials here until the study has `target` finished ones, --timeout passes, or a trial fails
    on a user error (raised again here: every trial would fail the same way)."""
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    waiting_said = False
    while True:
        _fail_stale(study)
        found = counts(study)
        finished = found.get("COMPLETE", 0) + found.get("PRUNED", 0)
        if finished >= target:
            return
        if deadline is not None and time.monotonic() >= deadline:
            log.info("--timeout reached: no new trial in this worker")
            return
        if finished + found.get("RUNNING", 0) >= target:
            # The rest is running elsewhere. Stay until it finishes: if its worker is dead (a
            # restart right after a kill), its heartbeat goes stale and this worker retries it.
            if not waiting_said:
                log.info("waiting for %d running trial(s): another worker's, or a dead worker's until its "
                         "heartbeat is %s s old", found["RUNNING"], settings.grace_period)
                waiting_said = True
            time.sleep(min(5, settings.heartbeat_interval))
            continue
        try:
            study.optimize(objective, n_trials=1, gc_after_trial=True)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (a preempted job): the trial is FAIL; run it again later
            _requeue(study, objective.current, settings.max_retry)
            raise
        if objective.abort is not None:
            raise objective.abort
        after_trial()


def reconcile(study: optuna.Study, client: Any) -> None:
    """Tag the MLflow runs of failed trials FAIL (a dead worker could not) and end any left RUNNING."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = t.user_attrs.get(ATTR_RUN)  # set as soon as the trial's run existed
        if not run_id:
            continue
        try:
            run = client.get_run(run_id)
            if run.data.tags.get(TAG_STATE) != "FAIL":
                client.set_tag(run_id, TAG_STATE, "FAIL")
                client.set_tag(run_id, TAG_TRIAL, str(t.number))
            if run.info.status == "RUNNING":
                client.set_terminated(run_id, status="KILLED")
        except Exception as e:
            log.warning("could not mark trial %d's MLflow run %s failed: %s", t.number, run_id, e)
