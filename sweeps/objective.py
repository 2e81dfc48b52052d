"""One sweep trial: sample parameters, train with `run_experiment` as a nested MLflow run, return the metric.

    objective = Objective(settings, parent_run_id)
    study.optimize(objective, n_trials=1)     # what sweeps/workers.py does, one trial at a time

Each trial is a child run of the sweep's parent (`run_experiment(parent_run_id=...)`), named
<study>-trial-NNNN like its folder under <output_dir>/<study>/. The runner hands over the run's id
as soon as the run exists (`on_run_started`): the trial records it (`mlflow_run_id`) and tags the run
with the study and trial number at once, so even a run whose worker is killed later is linked. At
the end the run is tagged with the trial's Optuna state: complete -> FINISHED, pruned -> KILLED +
`sweep.trial_state=PRUNED`, failed -> FAILED (or KILLED when its worker died, see workers.reconcile).

- **Pruning** compares what the trial reports at each validation (a validation loss, or a
  benchmark score every --eval_steps) with the pruner's threshold. A diverged trial (NaN/inf loss)
  counts as pruned, so the sampler learns to avoid its region instead of retrying it.
- **A user error** (config, data, store, disk) would fail every trial the same way: the trial ends
  FAIL with the one-line reason and the sweep stops (`Objective.abort`). A bug fails the trial with
  its traceback.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import optuna

from experiments.runner import run_experiment
from nanovlm import metrics as metric_names
from nanovlm.checks import environment_error, user_errors
from nanovlm.config import override
from sweeps import space as search_space
from sweeps.names import (ATTR_FAIL_REASON, ATTR_RUN, ATTR_WORKER, TAG_FAIL_REASON, TAG_PRUNED_REASON,
                          TAG_RETRIED_FROM, TAG_ROLE, TAG_STATE, TAG_STUDY, TAG_TRIAL)
from sweeps.settings import SweepError, SweepSettings, prunable
from sweeps.workers import retried_from, worker_id

log = logging.getLogger("sweeps")


def user_error_message(err: BaseException) -> str | None:
    """One line for an error that is the user's to fix (config, data, stores, disk), None for a bug."""
    message = str(err) if isinstance(err, user_errors()) else environment_error(err)
    return " ".join(message.split()) if message is not None else None


class _TrialRun:
    """A trial's MLflow run, known from the moment the runner starts it."""

    def __init__(self, client: Any, trial: optuna.Trial, tags: dict[str, Any]):
        self.client, self.trial, self.tags = client, trial, tags
        self.run_id: str | None = None

    def started(self, run_id: str) -> None:
        self.run_id = run_id
        self.trial.set_user_attr(ATTR_RUN, run_id)
        self.tag({})

    def tag(self, extra: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        if self.run_id is not None:
            tags = {TAG_ROLE: "trial", **self.tags, **extra}
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, state: str, reason: str = "") -> None:
        """Record the Optuna state on the run; a pruned run ends KILLED (stopped on purpose)."""
        try:
            key = TAG_FAIL_REASON if state == "FAIL" else TAG_PRUNED_REASON
            self.tag({TAG_STATE: state, **({key: reason[:500]} if reason else {})})
            if state == "PRUNED" and self.run_id is not None:
                self.client.set_terminated(self.run_id, status="KILLED")
        except Exception as e:  # bookkeeping must not hide the trial's own outcome
            log.warning("could not record trial %d's state in MLflow: %s", self.trial.number, e)


class Objective:
    """Called by Optuna once per trial; see the module docstring."""

    def __init__(self, settings: SweepSettings, parent_run_id: str):
        from mlflow import MlflowClient

        self.settings = settings
        self.parent_run_id = parent_run_id
        self.current: int | None = None  # the number of the trial in progress
        self.abort: BaseException | None = None  # a user error that would fail every trial: stops the sweep
        self.client = MlflowClient(tracking_uri=settings.tracking_uri)
        self.prunes = settings.pruner != "none"
        self.reports = prunable(settings.metric, settings.direction, settings.base.train.eval_steps)
        # Trial folders: <output_dir>/<study>/<study>-trial-NNNN (the MLflow run name is the folder name).
        self.output_dir = Path(settings.base.output_dir) / settings.study_name

    def __call__(self, trial: optuna.Trial) -> float:
        from nanovlm.train import NonFiniteLoss

        s = self.settings
        self.current = trial.number
        params = search_space.suggest(trial, s.space)
        trial.set_user_attr(ATTR_WORKER, worker_id())
        trial.set_user_attr(ATTR_RUN, "")  # a retried trial inherits its original's attributes
        frozen = next((t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                       if t.number == trial.number), None)
        retry_of = retried_from(frozen) if frozen is not None else None
        run_name = f"{s.study_name}-trial-{trial.number:04d}"
        _move_aside(self.output_dir / run_name)
        cfg = override(s.base, {**s.fixed, **params, "run_name": run_name, "output_dir": str(self.output_dir)})
        tags: dict[str, Any] = {TAG_STUDY: s.study_name, TAG_TRIAL: trial.number}
        if retry_of is not None:
            tags[TAG_RETRIED_FROM] = retry_of
        log.info("trial %d%s: %s", trial.number, f" (retry of {retry_of})" if retry_of is not None else "",
                 ", ".join(f"{k}={search_space.show(v)}" for k, v in params.items()))
        run = _TrialRun(self.client, trial, tags)

        def on_validation(step: int, metrics: dict[str, float]) -> None:
            value = metrics.get(metric_names.VAL_LOSS if s.metric == metric_names.BEST_VAL_LOSS else s.metric)
            if self.reports and value is not None:
                trial.report(value, step)
                if self.prunes and trial.should_prune():
                    raise optuna.TrialPruned(f"{s.metric} {value:.4g} at step {step} is worse than the pruner's "
                                             f"threshold")

        try:
            result = run_experiment(cfg, parent_run_id=self.parent_run_id, tracking_uri=s.tracking_uri,
                                    on_validation=on_validation, on_run_started=run.started)
        except optuna.TrialPruned as e:
            log.info("trial %d pruned: %s", trial.number, e)
            run.end("PRUNED", reason=str(e))
            raise
        except NonFiniteLoss as e:  # a diverged rate is a result, not a crash: prune it so TPE avoids it
            log.info("trial %d diverged, counted as pruned: %s", trial.number, e)
            run.end("PRUNED", reason=f"diverged: {e}")
            raise optuna.TrialPruned(f"diverged: {e}") from e
        except Exception as e:
            reason = user_error_message(e)
            run.end("FAIL", reason=reason or f"{type(e).__name__}: {e}")
            if reason is None:
                raise  # a bug: its traceback is what is needed
            # NaN tells Optuna the trial failed without a traceback; the worker loop then stops the sweep.
            log.error("trial %d failed: %s", trial.number, reason)
            trial.set_user_attr(ATTR_FAIL_REASON, reason[:1000])
            self.abort = e
            # Optuna's warning about the NaN would print a second "error: ..." line; the sweep stops after
            # this trial and run_sweep restores the level.
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            return float("nan")
        except BaseException:
            run.end("FAIL")
            raise
        if s.metric not in result.metrics:
            raise SweepError(f"trial {trial.number} finished without {s.metric}; it logged {sorted(result.metrics)}")
        value = float(result.metrics[s.metric])
        run.tag({TAG_STATE: "COMPLETE"})
        log.info("trial %d complete: %s = %.5g (MLflow run %s)", trial.number, s.metric, value, result.run_id)
        return value


def _move_aside(run_dir: Path) -> None:
    """A folder left by an earlier study of the same name: keep it, but not where this trial writes."""
    if run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("%s exists (an earlier study of this name?): moved to %s", run_dir, aside.name)
        run_dir.rename(aside)
