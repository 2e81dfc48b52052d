"""The sweep engine: an Optuna study whose trials are `run_experiment` calls, each a nested MLflow run.

    settings = SweepSettings(base=override(get_preset("tiny"), {"max_steps": 8}), n_trials=4, study_name="demo")
    result = run_sweep(settings)          # -> SweepResult(study, parent_run_id, report_dir, summary)
    python -m sweeps.lr --preset tiny --n_trials 4 --max_steps 8     # the same from the command line

How a sweep is put together, and why:
- **One study, many workers.** Every worker (process, machine) runs `run_sweep` with the same
  storage and study name. `n_trials` is the study's total of finished trials (complete or pruned),
  counted in the storage, so restarting the same command resumes a sweep without redoing what is
  done, and N workers share the N trials (at most one extra trial per extra worker when two ask at
  the same instant). A worker leaves when the study has them all; while the last ones run
  elsewhere it waits, so that it can retry them if their worker turns out to be dead.
- **A killed worker loses only its running trial.** Storages beat a heartbeat for running trials;
  before each trial a worker fails trials silent for `grace_period` s and Optuna's
  RetryHeartbeatStaleTrialCallback queues a copy with the same parameters, which the next free
  worker runs first. A trial stopped by Ctrl-C or SIGTERM (a preempted job) is queued again the
  same way, at once. Completed trials are never touched.
- **Randomness per trial number.** A seeded sampler would draw the same "random" points again
  after a restart, and two workers with one seed would draw the same points at once. TPE and random
  samplers are re-seeded from (sampler_seed, trial number) before each trial: reproducible for one
  worker, and no repeats across restarts and workers, since trial numbers are unique in a study.
  (The grid sampler keeps one seed: it reads which grid points are taken from the storage.)
- **MLflow.** One parent run per study (created by the worker that created the study; its id is
  a study attribute, so other workers and later restarts attach to it) and one child run per trial
  (`run_experiment(parent_run_id=...)`), tagged with the trial number and final Optuna state:
  complete -> FINISHED, pruned -> KILLED + `sweep.trial_state=PRUNED`, failed -> FAILED (or KILLED
  when its worker died). The parent gets the best value and parameters after every trial, and the
  trials table and plots when a worker finishes (the last worker's copy covers every trial).
  The creator also saves a view of the runs page, "Sweep <study>": the parent with its trials
  nested under it, the searched parameters and the metric as columns, a parallel-coordinates
  chart; its link is logged and ends the summary.
- **Pruning** compares validation losses step by step, so it is on only when the objective is a
  validation loss; a diverged trial (NaN/inf loss) counts as pruned, so the sampler learns to avoid
  its region instead of retrying it.
- Trials run in this process, one at a time (a DDP trial would hang its other ranks when rank 0
  is pruned); parallelism comes from workers.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna

from evals.during_training import SYNTHETIC, task_names
from experiments.runner import default_run_name, run_experiment
from nanovlm import dashboard as D
from nanovlm import metrics as M
from nanovlm.checks import check_config, environment_error, user_errors
from nanovlm.config import ExperimentConfig, override
from nanovlm.data.synthetic import QUESTION_TYPES
from nanovlm.tracking import MLflowTracker, default_tracking_uri
from sweeps import report
from sweeps import space as S
from sweeps import storage as St

log = logging.getLogger("sweeps")

# Study attributes (Optuna) and run tags (MLflow) that tie a sweep together.
ATTR_PARENT = "mlflow_parent_run_id"
ATTR_METRIC = "metric"
ATTR_SPACE = "space"
ATTR_RUN = "mlflow_run_id"  # on each trial
ATTR_WORKER = "worker"  # host:pid that ran the trial
TAG_ROLE = "sweep.role"  # "parent" or "trial"
TAG_STUDY = "sweep.study_name"
TAG_TRIAL = "sweep.trial_number"
TAG_STATE = "sweep.trial_state"  # COMPLETE, PRUNED, FAIL (Optuna's names)
TAG_RETRIED_FROM = "sweep.retried_from"
TAG_FAIL_REASON = "sweep.fail_reason"  # the one-line reason a trial failed on a user error
ATTR_FAIL_REASON = "fail_reason"  # the same on the Optuna trial
PARENT_WAIT_S = 120  # how long a worker waits for the study's creator to make the parent run

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("auto", "median", "hyperband", "none")
PRUNABLE_METRICS = (M.VAL_LOSS, M.BEST_VAL_LOSS)  # what a trial reports at each validation


def prunable(metric: str, direction: str, eval_steps: int) -> bool:
    """Metrics a trial reports while it trains: validation losses (minimised) and benchmark scores
    when the trials evaluate every --eval_steps (maximised; otherwise only the final score exists)."""
    return (metric in PRUNABLE_METRICS and direction == "minimize") or (
        metric.startswith("eval/") and direction == "maximize" and eval_steps > 0)


class SweepError(ValueError):
    """A sweep that cannot start as asked; raised before any trial runs."""


def user_error_message(err: BaseException) -> str | None:
    """One line for an error that is the user's to fix (config, data, stores, disk), None for a bug."""
    message = str(err) if isinstance(err, user_errors()) else environment_error(err)
    return " ".join(message.split()) if message is not None else None


def known_metrics(cfg: ExperimentConfig) -> list[str]:
    """The metrics a trial's RunResult carries, i.e. what a sweep can optimise."""
    names = [M.VAL_LOSS, M.BEST_VAL_LOSS, M.TRAIN_LOSS]
    tasks = task_names(cfg)
    if cfg.data.dataset == "synthetic" and SYNTHETIC in tasks:  # held-out questions exist on synthetic data only
        for task in ("synthetic", "synthetic_blind"):
            names += [M.eval_name(task, kind) for kind in (*QUESTION_TYPES, "overall")]
    return names


def _benchmark_metric(metric: str, cfg: ExperimentConfig) -> bool:
    """eval/<task>/<score> of a benchmark in --eval_tasks (its score names come from the task at run time)."""
    tasks = set(task_names(cfg)) - {SYNTHETIC}
    return metric.count("/") == 2 and metric.startswith("eval/") and metric.split("/")[1] in tasks


def default_direction(metric: str) -> str:
    return "maximize" if metric.startswith("eval/") else "minimize"


def check_metric(metric: str, cfg: ExperimentConfig) -> None:
    valid = known_metrics(cfg)
    if metric not in valid and not _benchmark_metric(metric, cfg):
        import difflib

        close = difflib.get_close_matches(metric, valid, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        extra = "" if cfg.data.dataset == "synthetic" else " (eval/synthetic/* exist only with --dataset synthetic)"
        raise SweepError(f"--metric {metric!r} is not logged by the trials.{hint} Valid: {', '.join(valid)}{extra}")


@dataclass
class SweepSettings:
    base: ExperimentConfig  # the preset with the runner flags applied; each trial overrides the searched fields
    space: S.Space = field(default_factory=S.default_space)
    fixed: dict[str, Any] = field(default_factory=dict)  # values applied to every trial (--space NAME=VALUE)
    n_trials: int = 20  # the study's total of finished (complete + pruned) trials
    timeout: float | None = None  # no new trial starts in this worker after this many seconds
    study_name: str = ""  # "" = "lr-" + the base config's run name (so the same command resumes)
    storage: str = ""  # "" = optuna.db beside the MLflow sqlite store
    tracking_uri: str = ""  # "" = nanovlm.tracking.default_tracking_uri()
    metric: str = M.VAL_LOSS
    direction: str = ""  # "" = minimize for losses, maximize for eval/ accuracies
    sampler: str = "tpe"
    sampler_seed: int = 0
    grid_points: int = 3  # per log range, with --sampler grid
    pruner: str = "auto"  # median when the metric is a validation loss, else none
    prune_startup_trials: int = 2  # trials that finish before the median pruner prunes anything
    prune_warmup_steps: int = 0  # steps of every trial that are never pruned
    heartbeat_interval: int = 30
    grace_period: int | None = 120  # a running trial silent this long belongs to a dead worker
    max_retry: int = 3  # times a killed worker's trial is run again
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # trials to run first (a new study only)
    register: str = ""  # MLflow registered model that gets the best trial's checkpoint at the end ("" = none)
    register_alias: str = ""  # the alias of that version ("" = experiments.register.DEFAULT_ALIAS)

    def resolve(self) -> SweepSettings:
        """Fill the defaults and check everything that can be checked without touching a store."""
        if self.n_trials < 1:
            raise SweepError(f"--n_trials must be at least 1, got {self.n_trials}")
        if self.timeout is not None and self.timeout <= 0:
            raise SweepError(f"--timeout must be positive, got {self.timeout}")
        if not self.space:
            raise SweepError("the search space is empty: every parameter is fixed or off; search at least one "
                             f"(--space NAME=LOW:HIGH or NAME=A,B; searchable: {', '.join(S.SEARCHABLE)})")
        for name in list(self.space) + list(self.fixed):
            S.check_name(name)
        check_metric(self.metric, self.base)
        check_config(override(self.base, self.fixed))  # what every trial shares, as `experiments.run` checks it
        self.direction = self.direction or default_direction(self.metric)
        if self.direction not in ("minimize", "maximize"):
            raise SweepError(f"--direction must be minimize or maximize, got {self.direction!r}")
        if self.sampler not in SAMPLERS:
            raise SweepError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "grid" and self.grid_points < 1:
            raise SweepError(f"--grid_points must be at least 1, got {self.grid_points}")
        if self.pruner not in PRUNERS:
            raise SweepError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        reported = prunable(self.metric, self.direction, self.base.train.eval_steps)
        if self.pruner == "auto":
            self.pruner = "median" if reported else "none"
        elif self.pruner != "none" and not reported:
            raise SweepError(f"--pruner {self.pruner} compares what a trial reports while it trains: --metric "
                             f"{M.VAL_LOSS} (minimize) or an eval/<task>/<score> (maximize, with --eval_steps N); "
                             f"use --pruner none with --metric {self.metric}")
        if self.heartbeat_interval < 1:
            raise SweepError(f"--heartbeat_interval must be at least 1 s, got {self.heartbeat_interval}")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise SweepError(f"--grace_period ({self.grace_period} s) must be longer than --heartbeat_interval "
                             f"({self.heartbeat_interval} s), or live trials would be failed")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SweepError("sweeps run each trial in one process; start more workers instead of torchrun")
        self.enqueue = [S.check_params(self.space, p, f"--enqueue #{i + 1}") for i, p in enumerate(self.enqueue)]
        if self.register_alias and not self.register:
            raise SweepError("--alias names the version --register NAME creates: add --register NAME")
        if self.register:
            from experiments.register import DEFAULT_ALIAS, check_alias, check_name

            check_name(self.register)
            self.register_alias = check_alias(self.register_alias or DEFAULT_ALIAS)
        self.tracking_uri = St.normalise_tracking_uri(self.tracking_uri or default_tracking_uri())
        self.storage = St.normalise_url(self.storage or St.default_storage(self.tracking_uri))
        St.check_separate(self.storage, self.tracking_uri)
        self.study_name = self.study_name or default_study_name(self.base)
        if not STUDY_NAME.fullmatch(self.study_name):
            # It names a folder and appears in MLflow search filters: keep it to plain characters.
            raise SweepError(f"--study_name {self.study_name!r}: use letters, digits and . _ - = , + only")
        return self

    def target(self) -> int:
        """Finished trials to reach: n_trials, or the grid's size when that is smaller."""
        if self.sampler == "grid":
            return min(self.n_trials, S.grid_size(self.space, self.grid_points))
        return self.n_trials

    def description(self) -> dict[str, Any]:
        """What the parent run records as params."""
        return {"study_name": self.study_name, "preset": self.base.preset, "metric": self.metric,
                "direction": self.direction, "sampler": self.sampler, "sampler_seed": self.sampler_seed,
                "pruner": self.pruner, "prune_startup_trials": self.prune_startup_trials,
                "prune_warmup_steps": self.prune_warmup_steps, "storage": St.redact(self.storage),
                **{f"space.{k}": v for k, v in S.describe(self.space).items()},
                **{f"fixed.{k}": v for k, v in self.fixed.items()}}


STUDY_NAME = re.compile(r"[\w.=,+-]{1,200}")


def default_study_name(base: ExperimentConfig) -> str:
    """`lr-` + the runner's name for the base config: the same command resumes the same study."""
    return re.sub(r"[^\w.=,+-]", "_", "lr-" + default_run_name(base))


def _trial_seed(seed: int, number: int) -> int:
    return (seed * 1_000_003 + number * 7_919 + 12_345) % 2**32


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Wraps a sampler factory; before each trial the sampler is rebuilt with a seed from the trial
    number, so restarts and parallel workers never replay each other's draws (see the module doc)."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._make, self._seed = make, seed
        self._inner = make(_trial_seed(seed, -1))

    def before_trial(self, study: Any, trial: Any) -> None:
        self._inner = self._make(_trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(settings: SweepSettings) -> Any:
    if settings.sampler == "grid":
        # Not re-seeded per trial: the seed fixes the grid's order, and the grid ids done or running
        # are read from the storage, so one fixed seed neither repeats nor collides.
        return optuna.samplers.GridSampler(S.grid(settings.space, settings.grid_points), seed=settings.sampler_seed)

    def make(seed: int) -> optuna.samplers.BaseSampler:
        if settings.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        # constant_liar: a worker treats the others' running trials as bad, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    return TrialSeededSampler(make, settings.sampler_seed)


def make_pruner(settings: SweepSettings) -> Any:
    tc = settings.base.train
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup_trials,
                                           n_warmup_steps=settings.prune_warmup_steps)
    if settings.pruner == "hyperband":
        first_validation = min(tc.validation_steps, tc.eval_interval, tc.max_steps)
        return optuna.pruners.HyperbandPruner(min_resource=first_validation, max_resource=tc.max_steps)
    return optuna.pruners.NopPruner()


@dataclass
class SweepResult:
    study: Any  # optuna.Study
    parent_run_id: str
    report_dir: Path
    summary: str


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _open_study(settings: SweepSettings, storage: Any) -> tuple[Any, bool]:
    """(study, True) when this worker created it, (study, False) when it existed."""
    sampler, pruner = make_sampler(settings), make_pruner(settings)
    try:
        study = optuna.create_study(storage=storage, study_name=settings.study_name, direction=settings.direction,
                                    sampler=sampler, pruner=pruner)
        study.set_user_attr(ATTR_METRIC, settings.metric)
        study.set_user_attr(ATTR_SPACE, S.describe(settings.space))
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
    if attrs.get(ATTR_SPACE, S.describe(settings.space)) != S.describe(settings.space):
        log.warning("study %s was started with the space %s; this worker searches %s", settings.study_name,
                    attrs[ATTR_SPACE], S.describe(settings.space))
    if settings.enqueue:
        log.warning("--enqueue applies to a new study only; study %s exists, ignoring it", settings.study_name)
    return study, False


def view_id(study_name: str) -> str:
    """The sweep's saved view in the MLflow UI (a tag key: no = , + in it)."""
    return "sweep-" + re.sub(r"[^\w.-]", "_", study_name)


def _sweep_view(settings: SweepSettings) -> str:
    """The runs page for one sweep: the parent and its nested trials, searched parameters as columns."""
    params = [f"train.{name}" for name in settings.space]  # as the trials log them (flattened config)
    loss = [m for m in (M.VAL_LOSS, M.TRAIN_LOSS) if m != settings.metric]
    columns = [*map(D.param_column, params), D.metric_column(settings.metric),
               D.metric_column(f"best/{settings.metric}"), D.tag_column(TAG_STATE)]  # best/...: the parent's
    return D.runs_view(f"Sweep {settings.study_name}", {"Sweep": [settings.metric], "Loss": loss}, columns=columns,
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


def _attach_parent(settings: SweepSettings, study: Any, created: bool) -> MLflowTracker:
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


class _Objective:
    """One trial: sample, train with `run_experiment`, report validation losses, return the metric."""

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

    def _run_id(self, run_name: str) -> str | None:
        """The trial's MLflow run: the child of this sweep's parent with the trial's name."""
        experiment = self.client.get_experiment_by_name(self.settings.base.experiment)
        if experiment is None:
            return None
        runs = self.client.search_runs(
            [experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and attributes.run_name = '{run_name}'")
        return runs[0].info.run_id if runs else None

    def _link(self, trial: Any, run_name: str, link: dict[str, Any], tags: dict[str, Any]) -> None:
        """Find the trial's MLflow run once (the runner does not hand out its id before it returns),
        record it on the Optuna trial, and tag the run."""
        from mlflow.entities import RunTag

        if link.get("run_id") is None:
            link["run_id"] = self._run_id(run_name)
            if link["run_id"] is None:
                return
            trial.set_user_attr(ATTR_RUN, link["run_id"])
        self.client.log_batch(link["run_id"], tags=[RunTag(k, str(v)) for k, v in {TAG_ROLE: "trial", **tags}.items()])

    def __call__(self, trial: Any) -> float:
        from nanovlm.train import NonFiniteLoss

        s = self.settings
        self.current = trial.number
        params = S.suggest(trial, s.space)
        trial.set_user_attr(ATTR_WORKER, _worker_id())
        trial.set_user_attr(ATTR_RUN, "")  # a retried trial inherits its original's attributes
        frozen = next((t for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                       if t.number == trial.number), None)
        retried_from = frozen.system_attrs.get("failed_trial") if frozen is not None else None
        run_name = f"{s.study_name}-trial-{trial.number:04d}"
        _move_aside(self.output_dir / run_name)
        cfg = override(s.base, {**s.fixed, **params, "run_name": run_name, "output_dir": str(self.output_dir)})
        tags = {TAG_STUDY: s.study_name, TAG_TRIAL: trial.number}
        if retried_from is not None:
            tags[TAG_RETRIED_FROM] = retried_from
        log.info("trial %d%s: %s", trial.number, f" (retry of {retried_from})" if retried_from is not None else "",
                 ", ".join(f"{k}={S.show(v)}" for k, v in params.items()))
        link: dict[str, Any] = {}

        def on_validation(step: int, metrics: dict[str, float]) -> None:
            if not link.get("tagged"):  # early, so that a killed trial's run is linked too
                self._link(trial, run_name, link, tags)
                link["tagged"] = link.get("run_id") is not None
            value = metrics.get(M.VAL_LOSS if s.metric == M.BEST_VAL_LOSS else s.metric)
            if self.reports and value is not None:
                trial.report(value, step)
                if self.prunes and trial.should_prune():
                    raise optuna.TrialPruned(f"{s.metric} {value:.4g} at step {step} is worse than the pruner's "
                                             f"threshold")

        try:
            result = run_experiment(cfg, parent_run_id=self.parent_run_id, tracking_uri=s.tracking_uri,
                                    on_validation=on_validation)
        except optuna.TrialPruned as e:
            log.info("trial %d pruned: %s", trial.number, e)
            self._end_run(trial, run_name, link, tags, "PRUNED", reason=str(e))
            raise
        except NonFiniteLoss as e:  # a diverged rate is a result, not a crash: prune it so TPE avoids it
            log.info("trial %d diverged, counted as pruned: %s", trial.number, e)
            self._end_run(trial, run_name, link, tags, "PRUNED", reason=f"diverged: {e}")
            raise optuna.TrialPruned(f"diverged: {e}") from e
        except Exception as e:
            reason = user_error_message(e)
            self._end_run(trial, run_name, link, tags, "FAIL", reason=reason or f"{type(e).__name__}: {e}")
            if reason is None:
                raise  # a bug: its traceback is what is needed
            # A mistake in the input (config, data, store, disk) would fail every trial the same way: this
            # trial ends FAIL with the reason (NaN tells Optuna so without a traceback) and the sweep stops.
            log.error("trial %d failed: %s", trial.number, reason)
            trial.set_user_attr(ATTR_FAIL_REASON, reason[:1000])
            self.abort = e
            return float("nan")
        except BaseException:
            self._end_run(trial, run_name, link, tags, "FAIL")
            raise
        if s.metric not in result.metrics:
            raise SweepError(f"trial {trial.number} finished without {s.metric}; it logged {sorted(result.metrics)}")
        value = float(result.metrics[s.metric])
        link["run_id"] = result.run_id
        trial.set_user_attr(ATTR_RUN, result.run_id)
        self._link(trial, run_name, link, {**tags, TAG_STATE: "COMPLETE"})
        log.info("trial %d complete: %s = %.5g (MLflow run %s)", trial.number, s.metric, value, result.run_id)
        return value

    def _end_run(self, trial: Any, run_name: str, link: dict[str, Any], tags: dict[str, Any], state: str,
                 reason: str = "") -> None:
        """Record the Optuna state on the trial's MLflow run; a pruned run ends KILLED (stopped on purpose)."""
        try:
            key = TAG_FAIL_REASON if state == "FAIL" else "sweep.pruned_reason"
            extra = {**tags, TAG_STATE: state, **({key: reason[:500]} if reason else {})}
            self._link(trial, run_name, link, extra)
            if state == "PRUNED" and link.get("run_id"):
                self.client.set_terminated(link["run_id"], status="KILLED")
        except Exception as e:  # bookkeeping must not hide the trial's own outcome
            log.warning("could not record trial %d's state in MLflow: %s", trial.number, e)

    def reconcile(self, study: optuna.Study) -> None:
        """Tag the MLflow runs of failed trials (a dead worker could not) and end any left RUNNING."""
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
            run_id = t.user_attrs.get(ATTR_RUN) or self._run_id(f"{self.settings.study_name}-trial-{t.number:04d}")
            if not run_id:
                continue
            try:
                run = self.client.get_run(run_id)
                if run.data.tags.get(TAG_STATE) != "FAIL":
                    self.client.set_tag(run_id, TAG_STATE, "FAIL")
                    self.client.set_tag(run_id, TAG_TRIAL, str(t.number))
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run_id, status="KILLED")
            except Exception as e:
                log.warning("could not mark trial %d's MLflow run %s failed: %s", t.number, run_id, e)


def _move_aside(run_dir: Path) -> None:
    """A folder left by an earlier study of the same name: keep it, but not where this trial writes."""
    if run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("%s exists (an earlier study of this name?): moved to %s", run_dir, aside.name)
        run_dir.rename(aside)


def _counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def _requeue(study: optuna.Study, number: int | None, max_retry: int) -> None:
    """Queue a copy of an interrupted trial, as a heartbeat failure would: the next worker runs it."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is not None and trial.state == optuna.trial.TrialState.FAIL:
        St.retry_callback(max_retry)[1](study, trial)
        log.info("trial %d interrupted: queued again for the next worker", number)


def _fail_stale(study: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_sweep(settings: SweepSettings, *, print_summary: Callable[[str], None] | None = print) -> SweepResult:
    """Run this worker's share of the sweep; see the module docstring."""
    settings.resolve()  # every check that needs no store, before anything is created
    St.prepare_stores(settings.storage, settings.tracking_uri)
    storage = St.open_storage(settings.storage, settings.heartbeat_interval, settings.grace_period, settings.max_retry)
    study, created = _open_study(settings, storage)
    target = settings.target()
    log.info("study %s in %s: %s; %d finished trials wanted, %s", settings.study_name, St.redact(settings.storage),
             "created" if created else "resumed", target, _counts(study) or "none yet")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log lines say the same, with the run ids
    try:
        return _run(settings, study, created, target, print_summary)
    finally:
        optuna.logging.set_verbosity(verbosity)


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
    with _attach_parent(settings, study, created) as parent:
        objective = _Objective(settings, parent.run_id)
        deadline = time.monotonic() + settings.timeout if settings.timeout else None
        waiting_said = False
        while True:
            _fail_stale(study)  # a dead worker's trial -> FAIL, and a WAITING retry of it
            counts = _counts(study)
            finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
            if finished >= target:
                break
            if deadline is not None and time.monotonic() >= deadline:
                log.info("--timeout reached: no new trial in this worker")
                break
            if finished + counts.get("RUNNING", 0) >= target:
                # The rest is running elsewhere. Stay until it finishes: if its worker is dead (a
                # restart right after a kill), its heartbeat goes stale and this worker retries it.
                if not waiting_said:
                    log.info("waiting for %d running trial(s): another worker's, or a dead worker's until its "
                             "heartbeat is %s s old", counts["RUNNING"], settings.grace_period)
                    waiting_said = True
                time.sleep(min(5, settings.heartbeat_interval))
                continue
            try:
                study.optimize(objective, n_trials=1, gc_after_trial=True)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM (a preempted job): the trial is FAIL; run it again later
                _requeue(study, objective.current, settings.max_retry)
                raise
            if objective.abort is not None:  # the next trial would fail the same way
                raise objective.abort
            report.log_best(parent, study, settings)
        report_dir = objective.output_dir / "report"
        objective.reconcile(study)
        summary = report.write_and_log(parent, study, settings, report_dir,
                                       ui=D.ui_link(parent.tracking_uri, parent.experiment_id,
                                                    view=view_id(settings.study_name), charts=False))
        if settings.register:
            line = register_best(study, settings, parent)
            summary = f"{summary}\n{line}" if line else summary
    if print_summary is not None:
        print_summary(summary)
    return SweepResult(study, parent.run_id, report_dir, summary)

