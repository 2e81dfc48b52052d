"""The command lines of the benchmarks: one task (`python -m evals.mmstar CKPT`) or several
(`python -m evals.run CKPT --tasks mmstar,ai2d`), the same flags and the same outputs.

    python -m evals.mmstar CKPT [--data PATH_OR_HUB_ID] [--out DIR] [--batch_size N] [--limit N]
                                [--max_new_tokens N] [--legacy_extract] [--tracking_uri URI]
                                [--num_workers N] [--device cuda] [--threads N] [--no_tracking] [--no_progress]
                                [--revision COMMIT] [--no_resume]

For each task: a table on stdout, and results.json + predictions.jsonl in <out>/<task>/ (default
out: beside the checkpoint, <checkpoint's folder>/evals/<checkpoint name>); then the scores go to the
MLflow run that trained the checkpoint (see evals/mlflow_log.py), unless --no_tracking.
predictions.jsonl is written item by item; rerunning the same command after a kill resumes from
the items there (evals/resume.py), unless --no_resume. A user's mistake (a bad flag value, a wrong
path, a missing column) is one `error:` line and exit status 2 (evals/task_args.py).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from evals.data import DataError
from evals.harness import TaskResult, evaluate_task, load_task_data
from evals.report import default_out_dir, format_table, write_task_result
from evals.task import Task
from evals.task_args import fail, per_task

log = logging.getLogger("evals")


def _user_errors() -> tuple[type[BaseException], ...]:
    from nanovlm.backbones import BackboneUnavailable
    from nanovlm.config import ConfigError
    from nanovlm.model.vlm import IncompatibleCheckpoint

    return DataError, FileNotFoundError, BackboneUnavailable, IncompatibleCheckpoint, ConfigError


USER_ERRORS = _user_errors()  # wrong paths, missing columns, offline: one line, no traceback


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint directory (or hub repo id) of a nanovlm model")
    parser.add_argument("--out", help="results go to <out>/<task>/ (default out: <checkpoint's folder>/evals/"
                                      "<checkpoint name>)")
    parser.add_argument("--batch_size", type=int, default=32, help="prompts generated together (default 32)")
    parser.add_argument("--limit", type=int, help="evaluate the first N items only")
    parser.add_argument("--max_new_tokens", type=int,
                        help="generation budget (default: the task's, lmms-eval's value or 16)")
    parser.add_argument("--num_workers", type=int,
                        help="DataLoader workers decoding images (default: 2 on a GPU, 0 on CPU)")
    parser.add_argument("--device", help="cuda, cpu, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is fastest for tiny "
                                                    "models on a busy CPU)")
    parser.add_argument("--tracking_uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--no_tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--no_resume", action="store_true",
                        help="generate every item again, even when predictions.jsonl holds items of the same "
                             "evaluation (default: resume from them)")
    parser.add_argument("--revision", action="append", default=[], metavar="[TASK=]REV",
                        help="the hub dataset's revision (commit hash, branch, tag) instead of the task's pinned one "
                             "(lmms-eval's, or none); TASK=REV for one task of several; repeatable")


def add_task_options(parser: argparse.ArgumentParser, tasks: Sequence[Task]) -> None:
    if any(hasattr(t, "legacy_extract") for t in tasks):
        parser.add_argument("--legacy_extract", action="store_true",
                            help="MMStar: the answer rule of lmms-eval <= 0.7.1 (first character, '(X', "
                                 "'option X', 'the answer is X') instead of the 0.7.2+ extractor")


def with_options(task: Task, args: argparse.Namespace) -> Task:
    if hasattr(task, "legacy_extract") and getattr(args, "legacy_extract", False):
        return task.with_options(legacy_extract=True)
    return task


def revisions(args: argparse.Namespace, tasks: Sequence[Task]) -> dict[str, str]:
    """--revision values -> {task name: revision}: REV applies to every task, TASK=REV to one."""
    return per_task(args.revision, "--revision", [t.name for t in tasks], bare=True, metavar="REV")


def load_model(checkpoint: str, device: str | None, threads: int | None = None) -> Any:
    import torch

    from nanovlm.model.vlm import VisionLanguageModel

    if threads:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return VisionLanguageModel.from_pretrained(checkpoint, device=device)


def run_tasks(model: Any, checkpoint: str, plan: Sequence[tuple[Task, str | None, Path]],
              args: argparse.Namespace, revision: dict[str, str]) -> list[TaskResult]:
    """Evaluate each (task, data source, output folder) on its data at `revision` (task name ->
    revision; default: the task's own), print its table, write its files, then log all scores
    to MLflow once."""
    from evals.mlflow_log import checkpoint_meta

    from evals.resume import checkpoint_identity

    results, out_dirs, meta = [], {}, checkpoint_meta(checkpoint)
    model_id = checkpoint_identity(checkpoint)
    for task, source, out in plan:
        data = load_task_data(task, source, args.limit, revision=revision.get(task.name))
        result = evaluate_task(model, task, data, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                               num_workers=args.num_workers, progress=not args.no_progress,
                               predictions_path=Path(out) / "predictions.jsonl", model_id=model_id,
                               resume=not getattr(args, "no_resume", False))
        out_dirs[task.name] = write_task_result(result, out, checkpoint, extra={"checkpoint_meta": meta})
        print(format_table(result), flush=True)
        print(f"  -> {out}/results.json, predictions.jsonl", flush=True)
        results.append(result)
    if not args.no_tracking and results:
        from evals.mlflow_log import log_results

        run_id = log_results(results, checkpoint, out_dirs, tracking_uri=args.tracking_uri)
        print(f"MLflow run {run_id}: {', '.join(f'eval/{r.task}/...' for r in results)}", flush=True)
    return results


def main(task: Task, argv: Sequence[str] | None = None) -> list[TaskResult]:
    """`python -m evals.<task> CKPT ...`"""
    parser = argparse.ArgumentParser(prog=f"python -m evals.{task.name}",
                                     description=f"Evaluate a checkpoint on {task.name} (lmms-eval 0.7.3 rules).")
    add_common_args(parser)
    parser.add_argument("--data", help=f"hub id or local path (parquet file/folder, save_to_disk folder); "
                                       f"default {task.hub_id}")
    add_task_options(parser, [task])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = (Path(args.out) if args.out else default_out_dir(args.checkpoint)) / task.name
    revision = revisions(args, [task])
    try:
        model = load_model(args.checkpoint, args.device, args.threads)
        return run_tasks(model, args.checkpoint, [(with_options(task, args), args.data, out)], args, revision)
    except USER_ERRORS as e:
        fail(str(e))
