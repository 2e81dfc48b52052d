"""Benchmarks while training: the `evaluate(step)` callback `nanovlm.train.train` calls every `eval_steps`.

    evaluate = build_evaluator(model, cfg, synthetic_records)   # None when cfg.train.eval_tasks is empty
    evaluate(step)   # -> {"eval/mmstar/average": 0.31, "eval/synthetic/colour": 0.8, ...}

    python -m experiments.run tiny --eval_tasks synthetic,mmstar --eval_steps 200 --eval_data_dir DIR

Each task is scored exactly as `python -m evals.<task>` scores it (same prompt, parsing, metric,
aggregation, the same metric names and standard errors), on the first `eval_limit` items (the same items at every evaluation, so the curve is
comparable over steps). `synthetic` is the held-out synthetic questions with the blind control
(images shuffled), for runs on the synthetic data. Data is loaded once, before training starts, so
a missing dataset or column fails the run before any compute is spent.

Under torchrun the items of each benchmark are split over the ranks and the replies gathered, so
the scores are those one process gets (`evaluate_split`); the synthetic set is small and rank 0
evaluates it alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

from evals.data import DataError, EvalData
from evals.generation import Failed
from evals.harness import TaskResult, evaluate_task, load_task_data
from evals.mlflow_log import eval_metrics, task_scores
from evals.registry import get_task
from evals.synthetic import evaluate_with_control
from nanovlm import metrics as M
from nanovlm.config import ConfigError, ExperimentConfig
from nanovlm.distributed import Dist

log = logging.getLogger(__name__)
SYNTHETIC = "synthetic"


def task_names(cfg: ExperimentConfig) -> list[str]:
    return [name.strip() for name in cfg.train.eval_tasks.split(",") if name.strip()]


def build_evaluator(model: Any, cfg: ExperimentConfig, synthetic_records: list[dict] | None,
                    dist: Dist = Dist()) -> Callable[[int], dict[str, float]] | None:
    """The callback for `train(..., evaluate=...)`, or None when no task is asked for."""
    tc = cfg.train
    names = task_names(cfg)
    limit = tc.eval_limit or None
    tasks: dict[str, Any] = {}
    for name in names:
        if name == SYNTHETIC:
            if synthetic_records is None:  # e.g. the tiny preset (which asks for it) on other data
                log.warning("eval task 'synthetic' skipped: the training data is not the synthetic set")
            else:
                tasks[name] = synthetic_records[:limit]
            continue
        try:
            task = get_task(name)
        except KeyError as err:  # its message lists the valid names
            raise ConfigError(f"--eval_tasks: {err.args[0]}, {SYNTHETIC}") from None
        source = os.path.join(tc.eval_data_dir, f"{task.name}.parquet") if tc.eval_data_dir else None
        if source and not os.path.exists(source):
            raise ConfigError(f"--eval_data_dir {tc.eval_data_dir}: no {task.name}.parquet there "
                              f"(python -m evals.fixtures {tc.eval_data_dir} writes offline ones)")
        try:
            tasks[name] = (task, load_task_data(task, source, limit=limit))
        except DataError as err:
            raise ConfigError(f"--eval_tasks {name}: {err}") from None
    scored_tasks = {*tasks, "synthetic_blind"} if SYNTHETIC in tasks else set(tasks)
    best_task = tc.best_metric.split("/")[1] if tc.best_metric.startswith("eval/") else None
    if tc.best_metric != M.VAL_LOSS and best_task not in scored_tasks:
        raise ConfigError(f"--best_metric {tc.best_metric}: not a score of --eval_tasks '{tc.eval_tasks}'; use "
                          f"val/loss or eval/<task>/<score> with a task from --eval_tasks")
    if not tasks:
        return None
    metric_names = {tc.best_metric} - {M.VAL_LOSS}
    log.info("benchmarks during training: %s, every %s steps", ", ".join(names), tc.eval_steps or "max_steps")

    def evaluate(step: int) -> dict[str, float]:
        scores: dict[str, float] = {}
        for name, data in tasks.items():
            if name == SYNTHETIC:  # a few hundred one-word answers: rank 0 alone
                if dist.is_main:
                    for task, values in evaluate_with_control(model, data).items():
                        scores.update({M.eval_name(task, kind): value for kind, value in values.items()})
            else:
                task, rows = data
                scores.update(eval_metrics(task.name, task_scores(evaluate_split(model, task, rows, dist))))
        if dist.is_main:
            log.info("step %d: %s", step, {k: round(v, 4) for k, v in scores.items()})
            missing = metric_names - set(scores)
            if missing:
                raise ConfigError(f"--best_metric {tc.best_metric} is not among the scores of --eval_tasks "
                                  f"{tc.eval_tasks}: {', '.join(sorted(scores))}")
        dist.barrier()
        return scores

    return evaluate


def evaluate_split(model: Any, task: Any, data: EvalData, dist: Dist) -> TaskResult:
    """`evaluate_task` with the items split over the ranks: each generates replies for every
    world_size-th item, the replies are gathered, and every rank scores all of them, so the scores
    are those of one process."""
    if not dist.enabled:
        return evaluate_task(model, task, data, progress=False)
    mine = list(range(dist.rank, len(data), dist.world_size))
    shard = dataclasses.replace(data, rows=[data.rows[i] for i in mine], images=[data.images[i] for i in mine],
                                image_counts=[data.image_counts[i] for i in mine])
    replies = {} if not mine else {
        mine[p["index"]]: p["output"] if p["output"] is not None else Failed(p.get("error", ""))
        for p in evaluate_task(model, task, shard, progress=False).predictions}
    given = {index: reply for part in dist.all_gather_object(replies) for index, reply in part.items()}
    return evaluate_task(model, task, data, progress=False, given=given)
