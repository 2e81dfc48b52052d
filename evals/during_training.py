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
import subprocess
import sys
from pathlib import Path
from typing import Any

from evals.data import DataError, EvalData
from evals.generation import Failed
from evals.harness import TaskResult, evaluate_task, load_task_data
from evals.mlflow_log import eval_metrics, task_scores
from evals.registry import get_task
from evals.synthetic import evaluate_with_control
from nanovlm import metrics as metric_names
from nanovlm.config import ConfigError, ExperimentConfig
from nanovlm.distributed import Dist

log = logging.getLogger(__name__)
SYNTHETIC = "synthetic"


def task_names(cfg: ExperimentConfig) -> list[str]:
    return [name.strip() for name in cfg.train.eval_tasks.split(",") if name.strip()]


def build_evaluator(model: Any, cfg: ExperimentConfig, synthetic_records: list[dict] | None,
                    dist: Dist = Dist(), run: tuple[Path, str | None, str] | None = None) -> "Evaluator | None":
    """The callback for `train(..., evaluate=...)`, or None when no task is asked for.

    `run` = (run folder, MLflow run id, tracking URI): where --eval_async saves the checkpoints it
    evaluates and where their scores go."""
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
    if tc.best_metric != metric_names.VAL_LOSS and best_task not in scored_tasks:
        raise ConfigError(f"--best_metric {tc.best_metric}: not a score of --eval_tasks '{tc.eval_tasks}'; use "
                          f"val/loss or eval/<task>/<score> with a task from --eval_tasks")
    if not tasks:
        return None
    background = None
    if tc.eval_async and set(tasks) - {SYNTHETIC}:
        if best_task in set(tasks) - {SYNTHETIC}:
            raise ConfigError(f"--best_metric {tc.best_metric} is scored in another process with --eval_async, too "
                              f"late to pick checkpoints: drop --eval_async, or pick by val/loss")
        if run is None:
            raise ValueError("--eval_async needs the run folder, run id and tracking URI")
        background = AsyncEvaluations(model, [n for n in tasks if n != SYNTHETIC], cfg, *run)
    log.info("benchmarks during training: %s, every %s steps%s", ", ".join(names), tc.eval_steps or "max_steps",
             " (in another process)" if background else "")
    return Evaluator(model, tasks, {tc.best_metric} - {metric_names.VAL_LOSS}, dist, background)


class Evaluator:
    """`evaluator(step)` -> the scores of every task at this step (on every rank); `finish()` waits
    for the evaluations running in other processes (--eval_async)."""

    def __init__(self, model: Any, tasks: dict[str, Any], needed: set[str], dist: Dist,
                 background: "AsyncEvaluations | None"):
        self.model, self.tasks, self.needed, self.dist, self.background = model, tasks, needed, dist, background

    def __call__(self, step: int) -> dict[str, float]:
        scores: dict[str, float] = {}
        for name, data in self.tasks.items():
            if name == SYNTHETIC:  # a few hundred one-word answers: rank 0 alone
                if self.dist.is_main:
                    for task, values in evaluate_with_control(self.model, data).items():
                        scores.update({metric_names.eval_name(task, kind): value for kind, value in values.items()})
            elif self.background is None:
                task, rows = data
                scores.update(eval_metrics(task.name, task_scores(evaluate_split(self.model, task, rows, self.dist))))
        if self.background is not None and self.dist.is_main:
            self.background.submit(step)
        if self.dist.is_main:
            log.info("step %d: %s", step, {k: round(v, 4) for k, v in scores.items()})
            if self.needed - set(scores):
                raise ConfigError(f"--best_metric {', '.join(self.needed)} is not among the scores of --eval_tasks: "
                                  f"{', '.join(sorted(scores))}")
        self.dist.barrier()
        return scores

    def finish(self) -> None:
        if self.background is not None and self.dist.is_main:
            self.background.finish()


class AsyncEvaluations:
    """--eval_async: a checkpoint's benchmarks scored by `python -m evals.run` in another process.

    With a second GPU the process starts at once, on the last GPU, while training goes on; otherwise
    the evaluations wait for the end of training and run one after another. Each logs its scores to
    the training run at the checkpoint's step in one MLflow batch, so a killed process leaves no
    half-logged evaluation (and a resumed one starts again from its predictions.jsonl).
    """

    def __init__(self, model: Any, tasks: list[str], cfg: ExperimentConfig, run_dir: Path, run_id: str | None,
                 tracking_uri: str):
        self.model, self.tasks, self.cfg, self.run_dir = model, tasks, cfg, Path(run_dir)
        self.run_id, self.tracking_uri = run_id, tracking_uri
        self.waiting: list[list[str]] = []
        self.running: list[subprocess.Popen] = []

    def submit(self, step: int) -> None:
        tc = self.cfg.train
        checkpoint = self.run_dir / "checkpoints" / "eval" / f"step-{step:06d}"
        self.model.save_pretrained(checkpoint, meta={"run_id": self.run_id, "step": step, "preset": self.cfg.preset})
        command = [sys.executable, "-m", "evals.run", str(checkpoint), "--tasks", ",".join(self.tasks),
                   "--tracking_uri", self.tracking_uri, "--no_progress",
                   "--out", str(self.run_dir / "evals" / checkpoint.name),
                   *(["--data_dir", tc.eval_data_dir] if tc.eval_data_dir else []),
                   *(["--limit", str(tc.eval_limit)] if tc.eval_limit else [])]
        import torch

        if torch.cuda.device_count() > 1:  # a GPU of its own: evaluate now, beside training
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(torch.cuda.device_count() - 1)}
            self.running.append(subprocess.Popen(command, env=env))
            log.info("step %d: evaluating %s in process %d", step, checkpoint, self.running[-1].pid)
        else:
            self.waiting.append(command)
            log.info("step %d: %s saved; its evaluation runs after training", step, checkpoint)

    def finish(self) -> None:
        failed = [p.args for p in self.running if p.wait() != 0]
        for command in self.waiting:
            log.info("evaluating %s", command[3])
            if subprocess.run(command).returncode != 0:
                failed.append(command)
        self.waiting, self.running = [], []
        if failed:
            log.error("evaluations failed (rerun them by hand, they resume): %s",
                      "; ".join(" ".join(map(str, c[1:])) for c in failed))


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
