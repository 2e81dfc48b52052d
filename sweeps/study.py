"""The sweep engine: an Optuna study whose trials are `run_experiment` calls, each a nested MLflow run.

    settings = SweepSettings(base=override(get_preset("tiny"), {"max_steps": 8}), n_trials=4, study_name="demo")
    result = run_sweep(settings)          # -> SweepResult(study, parent_run_id, report_dir, summary)
    python -m sweeps.lr --preset tiny --n_trials 4 --max_steps 8     # the same from the command line

`run_sweep` is one worker's part of a sweep; run the same command in more processes or machines,
on one storage, for more workers. Its pieces, one job each:
    settings.py   SweepSettings: what the sweep is asked to do, checked before any store or trial
    samplers.py   the sampler (re-seeded per trial number) and the pruner
    parent.py     the study's MLflow parent run and its saved view in the MLflow UI
    objective.py  one trial: sample, train as a nested MLflow run, report, return the metric
    workers.py    many workers on one study: sharing the trials, retrying a dead worker's trial
    report.py     the best trial, trials table, plots and summary on the parent run
    storage.py    the Optuna storage (heartbeats, retries) beside the MLflow store
    names.py      the study attributes and run tags that tie it together
The parent gets the best value and parameters after every trial, and the trials table and plots
when a worker finishes (the last worker's copy covers every trial); with `register`, the best
trial's checkpoint becomes a version of an MLflow registered model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from nanovlm import dashboard
from nanovlm.tracking import MLflowTracker
from sweeps import report
from sweeps import space as search_space
from sweeps import storage as sweep_storage
from sweeps import workers as sweep_workers
from sweeps.names import ATTR_METRIC, ATTR_RUN, ATTR_SPACE, TAG_STUDY, TAG_TRIAL
from sweeps.objective import Objective
from sweeps.parent import attach_parent, view_id
from sweeps.samplers import make_pruner, make_sampler
from sweeps.settings import SweepError, SweepSettings

log = logging.getLogger("sweeps")


@dataclass
class SweepResult:
    study: Any  # optuna.Study
    parent_run_id: str
    report_dir: Path
    summary: str


def run_sweep(settings: SweepSettings, *, print_summary: Callable[[str], None] | None = print) -> SweepResult:
    """Run this worker's share of the sweep; see the module docstring."""
    settings.resolve()  # every check that needs no store, before anything is created
    sweep_storage.prepare_stores(settings.storage, settings.tracking_uri)
    storage = sweep_storage.open_storage(settings.storage, settings.heartbeat_interval, settings.grace_period, settings.max_retry)
    study, created = _open_study(settings, storage)
    target = settings.target()
    log.info("study %s in %s: %s; %d finished trials wanted, %s", settings.study_name, sweep_storage.redact(settings.storage),
             "created" if created else "resumed", target, sweep_workers.counts(study) or "none yet")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines say the same, with the run ids
    try:
        return _run(settings, study, created, target, print_summary)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _open_study(settings: SweepSettings, storage: Any) -> tuple[Any, bool]:
    """(study, True) when this worker created it, (study, False) when it existed."""
    sampler, pruner = make_sampler(settings), make_pruner(settings)
    try:
        study = optuna.create_study(storage=storage, study_name=settings.study_name, direction=settings.direction,
                                    sampler=sampler, pruner=pruner)
        study.set_user_attr(ATTR_METRIC, settings.metric)
        study.set_user_attr(ATTR_SPACE, search_space.describe(settings.space))
        for params in settings.enqueue:
            study.enqueue_trial(params)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner)
    direction = study.direction.name.lower()
    if direction != settings.direction:
        raise SweepError(f"study {settings.study_name!r} {direction}s its objective; this worker was asked to "
                         f"{settings.direction}: use the same --direction or another --study_name")
    attrs = study.user_attrs
    if attrs.get(ATTR_METRIC, settings.metric) != settings.metric:
        raise SweepError(f"study {settings.study_name!r} optimises {attrs[ATTR_METRIC]}, not {settings.metric}: use "
                         f"--metric {attrs[ATTR_METRIC]} or another --study_name")
    if attrs.get(ATTR_SPACE, search_space.describe(settings.space)) != search_space.describe(settings.space):
        log.warning("study %s was started with the space %s; this worker searches %s", settings.study_name,
                    attrs[ATTR_SPACE], search_space.describe(settings.space))
    if settings.enqueue:
        log.warning("--enqueue applies to a new study only; study %s exists, ignoring it", settings.study_name)
    return study, False


def register_best(study: optuna.Study, settings: SweepSettings, parent: MLflowTracker) -> str:
    """Register the best complete trial's checkpoint as a version of `settings.register` (see
    experiments/register.py); every worker that finishes calls this, and the same trial's checkpoint
    is registered once. Returns the summary line ("" when no trial completed)."""
    from experiments.register import register_run

    try:
        best = study.best_trial
    except ValueError:
        log.warning("--register %s: no trial completed, nothing to register", settings.register)
        return ""
    run_id = best.user_attrs.get(ATTR_RUN)
    if not run_id:
        log.warning("--register %s: the best trial %d has no MLflow run", settings.register, best.number)
        return ""
    registered = register_run(settings.register, run_id, alias=settings.register_alias,
                              tracking_uri=settings.tracking_uri,
                              extra_tags={TAG_STUDY: settings.study_name, TAG_TRIAL: best.number,
                                          "sweep.metric": settings.metric, "sweep.value": best.value,
                                          "sweep.parent_run_id": parent.run_id})
    parent.set_tags({"registered_model": registered.name, "registered_version": registered.version,
                     "registered_alias": registered.alias})
    return f"best trial {best.number}: {registered.summary()}"


def _run(settings: SweepSettings, study: optuna.Study, created: bool, target: int,
         print_summary: Callable[[str], None] | None) -> SweepResult:
    with attach_parent(settings, study, created) as parent:
        objective = Objective(settings, parent.run_id)
        sweep_workers.run_share(study, objective, settings, target, after_trial=lambda: report.log_best(parent, study, settings))
        sweep_workers.reconcile(study, objective.client)
        report_dir = objective.output_dir / "report"
        summary = report.write_and_log(parent, study, settings, report_dir,
                                       ui=dashboard.ui_link(parent.tracking_uri, parent.experiment_id,
                                                    view=view_id(settings.study_name), charts=False))
        if settings.register:
            line = register_best(study, settings, parent)
            summary = f"{summary}\n{line}" if line else summary
    if print_summary is not None:
        print_summary(summary)
    return SweepResult(study, parent.run_id, report_dir, summary)
