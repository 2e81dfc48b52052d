"""Logging evaluation scores to MLflow: to the run that trained the checkpoint, else to a new run.

    run_id = log_results(results, "runs/x/checkpoints/step-100", {"mmstar": out_dir}, tracking_uri=None)

Metric names come from `nanovlm.metrics.eval_name`, with names made MLflow-safe (MLflow rejects
"&"): eval/mmstar/average, eval/mmstar/science_technology, eval/mmstar/accuracy,
eval/mmstar/failed, eval/mme/mme_perception_score, ... Standard errors go beside their score:
eval/<task>/<score>_stderr (lmms-eval's; none where it reports N/A, as for MMStar's, MME's and
OCRBench's task-specific aggregations), and there eval/<task>/<score>_stderr_clt (lmms-eval's
standard error of the mean of the score's items); eval/<task>/accuracy_stderr. The step is the
checkpoint's training step (from its meta.json), so evaluations of several checkpoints of one run draw a curve.

The training run is found by the `run_id` in the checkpoint's meta.json, in the store at
`tracking_uri` (default: `nanovlm.tracking.default_tracking_uri()`, where training logs too).
A finished run keeps its final status (FINISHED, FAILED or KILLED); a run still RUNNING (training
in progress) is only added to. A checkpoint without a run id, or whose run is not in that store,
gets a new run in the `nanovlm-evals` experiment, tagged with the checkpoint (and a warning says
which store was searched). Each task's data is a run input with context "eval", named
`<hub id or path>:<split>` (`:val[:100]` under --limit), its fingerprint as the digest.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

from evals.harness import TaskResult
from nanovlm.files import read_json
from nanovlm.metrics import eval_name
from nanovlm.tracking import TERMINAL_STATUSES, MLflowTracker, dataset_input, default_tracking_uri

log = logging.getLogger(__name__)

EXPERIMENT = "nanovlm-evals"


def metric_key(name: str) -> str:
    """An MLflow-safe metric name part: "science & technology" -> "science_technology"."""
    return re.sub(r"[^a-z0-9.]+", "_", name.lower()).strip("_")


def checkpoint_meta(checkpoint: str | Path) -> dict[str, Any]:
    path = Path(checkpoint) / "meta.json"
    return read_json(path) if path.is_file() else {}


def architecture_tags(checkpoint: str | Path, meta: dict[str, Any]) -> dict[str, str]:
    """preset / vision_encoder / language_model, the tags the size table joins scores on."""
    config = Path(checkpoint) / "config.json"
    sources = read_json(config).get("sources", {}) if config.is_file() else {}
    tags = {"preset": meta.get("preset"), "vision_encoder": sources.get("vision"),
            "language_model": sources.get("language")}
    return {k: str(v) for k, v in tags.items() if v}


def _existing_run(run_id: str, tracking_uri: str) -> Any:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException:
        return None
    return None if run.info.lifecycle_stage == "deleted" else run


def log_results(results: Sequence[TaskResult], checkpoint: str, out_dirs: dict[str, Path], *,
                tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Log the tasks' scores, accuracy and failed count (and their results folders as artifacts
    under evals/<task>); return the run id."""
    scores = {r.task: task_scores(r) for r in results}
    return log_scores(scores, checkpoint, out_dirs, tracking_uri=tracking_uri, experiment=experiment,
                      datasets=[eval_input(r.data) for r in results if r.data.get("fingerprint")])


def task_scores(result: TaskResult) -> dict[str, float]:
    """What is logged of a task: its scores, accuracy, failed count and standard errors."""
    return {**result.scores, "accuracy": result.accuracy, "failed": float(result.counts["failed"]),
            **stderr_scores(result)}


def eval_metrics(task: str, values: dict[str, float]) -> dict[str, float]:
    """{score: value} of a task -> {eval/<task>/<score>: value}, names made MLflow-safe."""
    return {eval_name(task, metric_key(k)): float(v) for k, v in values.items()}


def stderr_scores(result: TaskResult) -> dict[str, float]:
    """<score>_stderr where lmms-eval reports one; <score>_stderr_clt where it reports N/A but a CLT
    standard error (the mean of the score's items'); accuracy_stderr."""
    out = {f"{k}_stderr": v for k, v in result.stderr.items() if v is not None}
    out.update({f"{k}_stderr_clt": v for k, v in result.stderr_clt.items()
                if v is not None and result.stderr.get(k) is None})
    if result.accuracy_stderr is not None:
        out["accuracy_stderr"] = result.accuracy_stderr
    return out


def eval_input(data: dict[str, Any]) -> dict[str, Any]:
    """`tracking.dataset_input`'s arguments for a task's data (`EvalData.describe()`)."""
    split = data.get("split") or "eval"
    if data.get("rows") is not None and data.get("total_rows") and data["rows"] < data["total_rows"]:
        split = f"{split}[:{data['rows']}]"  # --limit: the first rows, in the hub's split syntax
    return {"source": data["source"], "digest": data["fingerprint"], "context": "eval", "rows": data.get("rows"),
            "subset": data.get("config") or "", "split": split}


def log_scores(scores: dict[str, dict[str, float]], checkpoint: str, out_dirs: dict[str, Path] | None = None, *,
               tracking_uri: str | None = None, experiment: str = EXPERIMENT,
               datasets: Sequence[dict[str, Any]] = ()) -> str:
    """Log {task: {score name: value}} as eval/<task>/<score>, and `datasets` (`eval_input`s) as
    run inputs; return the run id."""
    from mlflow import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    out_dirs = out_dirs or {}
    meta = checkpoint_meta(checkpoint)
    run_id, step = meta.get("run_id"), int(meta.get("step", 0) or 0)
    metrics = {k: v for task, values in scores.items() for k, v in eval_metrics(task, values).items()}
    tags = {f"eval.{task}.checkpoint": str(checkpoint) for task in scores}
    run = _existing_run(run_id, uri) if run_id else None

    if run is not None and run.info.status == "RUNNING":
        # Training is still going on: add to the run without touching its status or signals.
        import time

        from mlflow.entities import Metric, RunTag

        client, now = MlflowClient(tracking_uri=uri), int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        if datasets:
            client.log_inputs(run_id, datasets=[dataset_input(**d) for d in datasets])
        for task, out in out_dirs.items():
            client.log_artifacts(run_id, str(out), f"evals/{task}")
        return run_id

    if run is not None:
        name = MlflowClient(tracking_uri=uri).get_experiment(run.info.experiment_id).name
        tracker = MLflowTracker.start(name, run_id=run_id, tracking_uri=uri, system_metrics=False)
        try:
            _log(tracker, metrics, step, tags, out_dirs, datasets)
        finally:
            # a FAILED or KILLED training run stays so
            tracker.finish(run.info.status if run.info.status in TERMINAL_STATUSES else "FINISHED")
        return run_id

    if run_id:
        log.warning("run %s (from %s/meta.json) is not in the MLflow store %s: logging to a new run in "
                    "experiment %r; pass --tracking_uri with the store the training used", run_id, checkpoint,
                    uri, experiment)
    with MLflowTracker.start(experiment, run_name=f"eval-{Path(checkpoint).name}", tracking_uri=uri,
                             tags={"checkpoint": str(checkpoint), "source_run_id": run_id or "",
                                   **architecture_tags(checkpoint, meta)},
                             system_metrics=False) as tracker:
        _log(tracker, metrics, step, tags, out_dirs, datasets)
        return tracker.run_id


def _log(tracker: MLflowTracker, metrics: dict[str, float], step: int, tags: dict[str, str],
         out_dirs: dict[str, Path], datasets: Sequence[dict[str, Any]]) -> None:
    tracker.set_tags(tags)
    for data in datasets:
        tracker.log_dataset(**data)
    tracker.log_metrics(metrics, step)
    tracker.flush()
    for task, out in out_dirs.items():
        tracker.log_artifact(out, f"evals/{task}")
