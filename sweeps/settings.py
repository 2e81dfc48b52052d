"""What one sweep is asked to do (`SweepSettings`), checked in full before any store or trial exists.

    settings = SweepSettings(base=override(get_preset("tiny"), {"max_steps": 8}), n_trials=4).resolve()
    settings.target(), settings.description()   # finished trials wanted; the params the parent run records

`resolve()` fills the defaults (study name, stores, direction, pruner) and raises `SweepError` with
one line naming the flag to fix; `python -m sweeps.lr` prints it as `error: ...` and exits 2.
Pruning compares what a trial reports while it trains, so `--pruner auto` turns it on only for a
validation loss (minimised) or a benchmark score evaluated every --eval_steps (maximised).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from evals.during_training import SYNTHETIC, task_names
from experiments.runner import default_run_name
from nanovlm import metrics as metric_names
from nanovlm.checks import check_config
from nanovlm.config import ExperimentConfig, override, suggest
from nanovlm.data.synthetic import QUESTION_TYPES
from nanovlm.tracking import default_tracking_uri
from sweeps import space as search_space
from sweeps import storage as sweep_storage

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("auto", "median", "hyperband", "none")
PRUNABLE_METRICS = (metric_names.VAL_LOSS, metric_names.BEST_VAL_LOSS)  # what a trial reports at each validation


def prunable(metric: str, direction: str, eval_steps: int) -> bool:
    """Metrics a trial reports while it trains: validation losses (minimised) and benchmark scores
    when the trials evaluate every --eval_steps (maximised; otherwise only the final score exists)."""
    return (metric in PRUNABLE_METRICS and direction == "minimize") or (
        metric.startswith("eval/") and direction == "maximize" and eval_steps > 0)


class SweepError(ValueError):
    """A sweep that cannot start as asked; raised before any trial runs."""


def known_metrics(cfg: ExperimentConfig) -> list[str]:
    """The metrics a trial's RunResult carries, i.e. what a sweep can optimise."""
    names = [metric_names.VAL_LOSS, metric_names.BEST_VAL_LOSS, metric_names.TRAIN_LOSS]
    tasks = task_names(cfg)
    if cfg.data.dataset == "synthetic" and SYNTHETIC in tasks:  # held-out questions exist on synthetic data only
        for task in ("synthetic", "synthetic_blind"):
            names += [metric_names.eval_name(task, kind) for kind in (*QUESTION_TYPES, "overall")]
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
        hint = f" {suggest(metric, valid, cutoff=0.5)}".rstrip()
        extra = "" if cfg.data.dataset == "synthetic" else " (eval/synthetic/* exist only with --dataset synthetic)"
        raise SweepError(f"--metric {metric!r} is not logged by the trials.{hint} Valid: {', '.join(valid)}{extra}")


@dataclass
class SweepSettings:
    base: ExperimentConfig  # the preset with the runner flags applied; each trial overrides the searched fields
    space: search_space.Space = field(default_factory=search_space.default_space)
    fixed: dict[str, Any] = field(default_factory=dict)  # values applied to every trial (--space NAME=VALUE)
    n_trials: int = 20  # the study's total of finished (complete + pruned) trials
    timeout: float | None = None  # no new trial starts in this worker after this many seconds
    study_name: str = ""  # "" = "lr-" + the base config's run name (so the same command resumes)
    storage: str = ""  # "" = optuna.db beside the MLflow sqlite store
    tracking_uri: str = ""  # "" = nanovlm.tracking.default_tracking_uri()
    metric: str = metric_names.VAL_LOSS
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
                             f"(--space NAME=LOW:HIGH or NAME=A,B; searchable: {', '.join(search_space.SEARCHABLE)})")
        for name in list(self.space) + list(self.fixed):
            search_space.check_name(name)
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
                             f"{metric_names.VAL_LOSS} (minimize) or an eval/<task>/<score> (maximize, with --eval_steps N); "
                             f"use --pruner none with --metric {self.metric}")
        if self.heartbeat_interval < 1:
            raise SweepError(f"--heartbeat_interval must be at least 1 s, got {self.heartbeat_interval}")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise SweepError(f"--grace_period ({self.grace_period} s) must be longer than --heartbeat_interval "
                             f"({self.heartbeat_interval} s), or live trials would be failed")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SweepError("sweeps run each trial in one process; start more workers instead of torchrun")
        self.enqueue = [search_space.check_params(self.space, p, f"--enqueue #{i + 1}") for i, p in enumerate(self.enqueue)]
        if self.register_alias and not self.register:
            raise SweepError("--alias names the version --register NAME creates: add --register NAME")
        if self.register:
            from experiments.register import DEFAULT_ALIAS, check_alias, check_name

            check_name(self.register)
            self.register_alias = check_alias(self.register_alias or DEFAULT_ALIAS)
        self.tracking_uri = sweep_storage.normalise_tracking_uri(self.tracking_uri or default_tracking_uri())
        self.storage = sweep_storage.normalise_url(self.storage or sweep_storage.default_storage(self.tracking_uri))
        sweep_storage.check_separate(self.storage, self.tracking_uri)
        self.study_name = self.study_name or default_study_name(self.base)
        if not STUDY_NAME.fullmatch(self.study_name):
            # It names a folder and appears in MLflow search filters: keep it to plain characters.
            raise SweepError(f"--study_name {self.study_name!r}: use letters, digits and . _ - = , + only")
        return self

    def target(self) -> int:
        """Finished trials to reach: n_trials, or the grid's size when that is smaller."""
        if self.sampler == "grid":
            return min(self.n_trials, search_space.grid_size(self.space, self.grid_points))
        return self.n_trials

    def description(self) -> dict[str, Any]:
        """What the parent run records as params."""
        return {"study_name": self.study_name, "preset": self.base.preset, "metric": self.metric,
                "direction": self.direction, "sampler": self.sampler, "sampler_seed": self.sampler_seed,
                "pruner": self.pruner, "prune_startup_trials": self.prune_startup_trials,
                "prune_warmup_steps": self.prune_warmup_steps, "storage": sweep_storage.redact(self.storage),
                **{f"space.{k}": v for k, v in search_space.describe(self.space).items()},
                **{f"fixed.{k}": v for k, v in self.fixed.items()}}


STUDY_NAME = re.compile(r"[\w.=,+-]{1,200}")


def default_study_name(base: ExperimentConfig) -> str:
    """`lr-` + the runner's name for the base config: the same command resumes the same study."""
    return re.sub(r"[^\w.=,+-]", "_", "lr-" + default_run_name(base))
