"""Run lmms-eval 0.7.3 itself on a nanovlm checkpoint: `python -m evals.lmms CKPT --tasks mmstar,...`.

    python -m evals.lmms CKPT --tasks mmstar,ai2d --limit 100          # lmms-eval's datasets (hub)
    python -m evals.lmms CKPT --tasks mmstar --data mmstar=/data/mmstar.parquet
    python -m evals.lmms CKPT --tasks all --data_dir /tmp/evalfix       # <dir>/<task>.parquet for each

Needs the optional `eval` extra, best in its own virtual environment: lmms-eval pulls a PyPI
torchvision that breaks transformers' import beside a CPU-only torch, and filelock >= 4 breaks
`simple_evaluate` (the extra pins filelock<4). The model is registered as `nanovlm_lab` (entry
point `lmms_eval.models`, or registered here when the entry point is not installed). CI checks it
against lmms-eval in such an environment: `bash .ci/lmms-eval`.

Local data: for each such task a task file is written that includes lmms-eval's own task file
(prompt, filters, metrics, aggregation unchanged) and only replaces where the data comes from;
its name is `<task>_local`. lmms-eval runs as its command line does (the default
`--reasoning_tags` are stripped). Output: lmms-eval's results in <out>/lmms_results.json, a table,
and the scores in MLflow as eval/lmms_<task>/<metric> (unless --no_tracking).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

from evals.postprocess import REASONING_TAGS
from evals.registry import TASKS, get_task
from evals.report import default_out_dir, json_safe
from evals.task_args import data_sources, task_names

log = logging.getLogger(__name__)

INSTALL_HINT = ("lmms-eval is not installed: `pip install '.[eval]'` (lmms-eval==0.7.3, filelock<4), preferably in "
                "a separate virtual environment, since its PyPI torchvision can break transformers beside a CPU torch")


def require_lmms_eval() -> None:
    try:
        import lmms_eval  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"error: {INSTALL_HINT} ({err})") from None


def local_task_file(task_name: str, data: str, folder: Path, task_manager: Any) -> str:
    """Write <folder>/<task>_local.yaml: lmms-eval's task with its data from a local parquet
    file or folder; returns the new task's name."""
    from lmms_eval.utils import load_yaml_config

    index = task_manager.task_index
    if task_name not in index or "yaml_path" not in index[task_name]:
        raise SystemExit(f"error: lmms-eval has no task {task_name!r}")
    yaml_path = index[task_name]["yaml_path"]
    split = load_yaml_config(yaml_path, mode="simple").get("test_split")
    path = Path(data).resolve()
    if path.is_dir():
        files = sorted(str(f) for f in path.rglob("*.parquet"))
        if not files:
            raise SystemExit(f"error: no parquet files under {path} (evals.lmms reads local data as parquet)")
    elif path.suffix == ".parquet":
        files = [str(path)]
    else:
        raise SystemExit(f"error: {data}: evals.lmms reads local data from a .parquet file or a folder of them")
    name = f"{task_name}_local"
    config = {"include": yaml_path, "task": name, "dataset_path": "parquet", "dataset_name": None,
              "dataset_kwargs": {"data_files": {split: files}}}
    # JSON is YAML; lmms-eval resolves the included file's !function tags relative to that file
    (folder / f"{name}.yaml").write_text(json.dumps(config, indent=2))
    return name


def evaluate(checkpoint: str, tasks: Sequence[str], sources: dict[str, str], *, limit: int | None = None,
             batch_size: int = 32, device: str | None = None, num_workers: int = 0,
             output_path: str | None = None) -> dict[str, Any]:
    """lmms-eval's `simple_evaluate` on our model; returns its results dict, plus "task_names":
    our task name -> the lmms-eval task that ran."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from evals.lmms_plugin import MODEL_NAME, register

    register()
    with tempfile.TemporaryDirectory(prefix="nanovlm-lmms-tasks-") as folder:
        manager = TaskManager("WARNING", include_path=folder if sources else None)
        names = {}
        for task in tasks:
            lmms_task = get_task(task).lmms_task
            names[task] = local_task_file(lmms_task, sources[task], Path(folder), manager) if task in sources \
                else lmms_task
        if sources:
            manager = TaskManager("WARNING", include_path=folder)  # index the files just written
        model_args = f"pretrained={checkpoint},num_workers={num_workers}"  # batch_size: simple_evaluate passes it
        if device:
            model_args += f",device={device}"
        # What lmms-eval's command line passes: reasoning blocks stripped before scoring, scoring
        # on the documents without their images, side files under the output path.
        cli = argparse.Namespace(reasoning_tags=json.dumps([list(t) for t in REASONING_TAGS]),
                                 process_with_media=False, output_path=output_path)
        results = simple_evaluate(model=MODEL_NAME, model_args=model_args, tasks=list(names.values()), limit=limit,
                                  batch_size=batch_size, task_manager=manager, log_samples=True, cli_args=cli,
                                  verbosity="WARNING")
    results["task_names"] = names
    return results


def scores_of(results: dict[str, Any], lmms_task: str) -> dict[str, float]:
    """A task's metric values from lmms-eval's results ("metric,filter" keys -> "metric")."""
    out = {}
    for key, value in results["results"].get(lmms_task, {}).items():
        metric = key.partition(",")[0]
        if "," in key and "_stderr" not in metric and isinstance(value, (int, float)):
            out[metric] = float(value)
    return out


def stderrs_of(results: dict[str, Any], lmms_task: str, suffix: str = "_stderr") -> dict[str, float | None]:
    """A task's standard errors from lmms-eval's results ("<metric><suffix>,filter" keys; "N/A" ->
    None) for the metrics with a numeric score (TextVQA's `submission` has none); suffix "_stderr"
    (lmms-eval's stderr_for_metric) or "_stderr_clt"."""
    scored = scores_of(results, lmms_task)
    out: dict[str, float | None] = {}
    for key, value in results["results"].get(lmms_task, {}).items():
        metric = key.partition(",")[0]
        if "," in key and metric.endswith(suffix) and metric[:-len(suffix)] in scored:
            out[metric[:-len(suffix)]] = float(value) if isinstance(value, (int, float)) else None
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m evals.lmms", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tasks", required=True, help=f"comma-separated, or 'all': {','.join(TASKS)}")
    parser.add_argument("--data", action="append", default=[], metavar="TASK=PATH", help="a task's local parquet")
    parser.add_argument("--data_dir", help="a folder with <task>.parquet files")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--device")
    parser.add_argument("--out", help="default: <checkpoint's folder>/evals/<checkpoint name>")
    parser.add_argument("--tracking_uri")
    parser.add_argument("--no_tracking", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    require_lmms_eval()
    tasks = task_names(args.tasks)
    sources = data_sources(args.data, args.data_dir, tasks)
    out = Path(args.out) if args.out else default_out_dir(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    results = evaluate(args.checkpoint, tasks, sources, limit=args.limit, batch_size=args.batch_size,
                       device=args.device, num_workers=args.num_workers, output_path=str(out))
    summary = {task: scores_of(results, lmms_task) for task, lmms_task in results["task_names"].items()}
    (out / "lmms_results.json").write_text(json.dumps(json_safe({
        "checkpoint": args.checkpoint, "task_names": results["task_names"], "scores": summary,
        "stderr": {t: stderrs_of(results, lt) for t, lt in results["task_names"].items()},
        "stderr_clt": {t: stderrs_of(results, lt, "_stderr_clt") for t, lt in results["task_names"].items()},
        "results": results.get("results"), "versions": results.get("versions"),
        "samples": {t: [{"doc_id": s.get("doc_id"), "target": s.get("target"), "resps": s.get("resps"),
                         "filtered_resps": s.get("filtered_resps")} for s in v]
                    for t, v in (results.get("samples") or {}).items()}}), indent=2, default=str))
    for task, scores in summary.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        print(f"{task} (lmms-eval {results['task_names'][task]}): {shown}")
    print(f"-> {out}/lmms_results.json")
    if not args.no_tracking:
        from evals.mlflow_log import log_scores

        run_id = log_scores({f"lmms_{t}": s for t, s in summary.items()}, args.checkpoint,
                            tracking_uri=args.tracking_uri)
        print(f"MLflow run {run_id}: eval/lmms_<task>/...")
    return results


if __name__ == "__main__":
    main()
