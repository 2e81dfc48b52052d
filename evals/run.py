"""Several benchmarks on one checkpoint, one summary: `python -m evals.run CKPT --tasks mmstar,ai2d,...`.

    python -m evals.run CKPT --tasks mmstar,scienceqa_img,ai2d,textvqa,chartqa,docvqa,ocrbench,mme
    python -m evals.run CKPT --tasks all --data_dir /tmp/evalfix      # <dir>/<task>.parquet for each
    python -m evals.run CKPT --tasks mmstar,mme --data mmstar=/data/mmstar --data mme=/data/mme.parquet

Each task is run as `python -m evals.<task>` would (same flags, same files, in <out>/<task>/);
then <out>/summary.json and a one-line-per-task table, and one MLflow logging for all.
lmms-eval's task names (textvqa_val, docvqa_val) are accepted.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from evals.cli import USER_ERRORS, add_common_args, add_task_options, load_model, revisions, run_tasks, with_options
from evals.harness import REFERENCE, TaskResult, harness_info
from evals.registry import TASKS, get_task
from evals.report import default_out_dir, format_summary, json_safe
from evals.task_args import data_sources, fail, task_names
from nanovlm.files import write_json


def main(argv: Sequence[str] | None = None) -> list[TaskResult]:
    parser = argparse.ArgumentParser(prog="python -m evals.run", description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--tasks", required=True, help=f"comma-separated, or 'all': {','.join(TASKS)}")
    parser.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                        help="a task's data (hub id or local path); repeatable")
    parser.add_argument("--data_dir", help="a folder with <task>.parquet files (python -m evals.fixtures writes one)")
    add_task_options(parser, list(TASKS.values()))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = task_names(args.tasks)
    tasks = [with_options(get_task(n), args) for n in names]
    sources = data_sources(args.data, args.data_dir, names)
    revision = revisions(args, tasks)
    out = Path(args.out) if args.out else default_out_dir(args.checkpoint)
    try:
        model = load_model(args.checkpoint, args.device, args.threads)
        results = run_tasks(model, args.checkpoint, [(t, sources.get(t.name), out / t.name) for t in tasks], args,
                            revision)
    except USER_ERRORS as e:
        fail(str(e))
    print()
    print(format_summary(results))
    write_json(out / "summary.json", json_safe({
        "harness": harness_info(), "reference": REFERENCE, "checkpoint": args.checkpoint,
        "tasks": {r.task: {"scores": r.scores, "stderr": r.stderr, "accuracy": r.accuracy, "counts": r.counts,
                           "items_per_s": r.items_per_s, "results": str(out / r.task / "results.json")}
                  for r in results}}))
    print(f"-> {out}/summary.json")
    return results


if __name__ == "__main__":
    main()
