"""MLflowTracker: a run in an MLflow store, its metrics stored by MLflow's asynchronous batch logging.

    with MLflowTracker.start("smoke", run_name="siglip-smollm") as tracker:
        tracker.log_params({"train.lr_projector": 5e-3})
        tracker.log_dataset("synthetic", "3f2a9c1e", "training", data=train_records)  # a run input
        for step in range(steps):
            tracker.log_metrics({"train/loss": loss}, step=step)   # never waits for the store
        tracker.flush()                        # returns once every metric so far is stored
        tracker.log_artifact("checkpoints/step-100")               # a file or a directory
    # normal exit -> FINISHED, an exception -> FAILED, Ctrl-C or SIGTERM -> KILLED
    MLflowTracker.start("smoke", run_id=run_id)                    # resume a run (RUNNING again)

Everything goes through an explicit `MlflowClient(tracking_uri)`, never the fluent API's global
active-run stack, so sequential runs, nested runs (a sweep's trials under an open parent,
`parent_run_id=`) and resumed runs in one process do not interfere with each other or with other
code using mlflow.

How metrics travel:
- `log_metrics` collects them; every `flush_every_s` seconds the collection goes to MLflow in one
  `MlflowClient.log_batch(..., synchronous=False)`, stored by MLflow's background threads while training
  goes on. One batch per interval, not one per step: each stored batch costs a transaction plus ~0.2 ms
  per metric in sqlite, CPU time (and GIL) the training loop would share.
- `flush` waits on the futures of the batches sent, then stores the rest directly: when it returns, the
  store has every metric logged before it. `train()` calls it before saving a checkpoint, so a run
  killed right after, even by SIGKILL, has the metric history the checkpoint covers. (Directly, because
  a flush waits anyway, and because MLflow ends a run (`set_terminated`) by shutting its background
  logging down, which takes a second once it was started: short runs that only flush never start it.)
- MLflow's async logging logs a failed batch and drops it; waiting on it raises an error without
  MLflow's error code, so `flush` stores a failed batch again directly: a key MLflow rejects (a
  forbidden character) is dropped, with an error, without losing the others; any other failure (a
  locked database, a server away) keeps the batch for the next flush, with a warning. A tracking
  hiccup never stops training.
- Non-finite values are skipped, with one warning per key: MLflow stores NaN, but it stores +-inf as
  +-1.8e308, a misleading number on a chart.
Params are strings and immutable in MLflow: re-logging the same value (a resumed run) is a no-op, and a
different value for an existing key is skipped with a warning instead of failing the run.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanovlm.dashboard import VIEW_TAG_PREFIX, ui_link
from nanovlm.tracking.experiment import get_or_create_experiment
from nanovlm.tracking.inputs import dataset_input
from nanovlm.tracking.orphans import owner_tags
from nanovlm.tracking.protocol import TERMINAL_STATUSES
from nanovlm.tracking.signals import install_sigterm, uninstall_sigterm
from nanovlm.tracking.store import TrackingError, open_client
from nanovlm.tracking.system_metrics import start_system_metrics

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

MAX_PARAM_VALUE_LENGTH = 6000  # MLflow's limit; truncated here so that a resumed run compares like with like
MAX_TAG_VALUE_LENGTH = 8000  # MLflow's limit: log_batch truncates to it, create_run does not
PARENT_TAG = "mlflow.parentRunId"  # what MLflow's UI uses to nest runs


class MLflowTracker:
    """A run in an MLflow store. Create it with `MLflowTracker.start(...)`, end it with `finish`."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, tracking_uri: str,
                 flush_every_s: float):
        self.client = client
        self.run_id: str | None = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.flush_every_s = flush_every_s
        self.status: str | None = None  # the terminal status, once finished
        self._collected: list[Any] = []  # mlflow.entities.Metric logged, not sent yet
        self._sent: list[tuple[list[Any], Any]] = []  # (metrics, their RunOperations), not known stored yet
        self._last_send = time.monotonic()
        self._nonfinite_keys: set[str] = set()
        self._rejected_keys: set[str] = set()  # keys MLflow refused: not collected any more
        self._system_monitor: Any = None
        self._handles_sigterm = False

    @classmethod
    def start(cls, experiment: str, run_name: str | None = None, *, run_id: str | None = None,
              parent_run_id: str | None = None, tags: dict | None = None,
              tracking_uri: str | None = None, system_metrics: bool | None = None,
              flush_every_s: float = 5.0) -> MLflowTracker:
        """Start a new run in `experiment` (created if missing), or resume `run_id`.

        `parent_run_id` nests the run under another one. `system_metrics=None` means on when psutil
        is installed and MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is not "false".
        """
        client, uri = open_client(tracking_uri)
        all_tags = {str(k): _tag_value(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        all_tags.update(owner_tags())  # so that mark_orphans_killed can tell a live run from a dead one

        resumed = bool(run_id)
        if resumed:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage == "deleted":
                raise TrackingError(f"cannot resume MLflow run {run_id}: it is deleted")
            experiment_id = run.info.experiment_id
            expected = client.get_experiment_by_name(experiment)
            if expected is None or expected.experiment_id != experiment_id:
                log.warning("resuming run %s, which belongs to experiment id %s, not %r",
                            run_id, experiment_id, experiment)
            # MLflow keeps the old end_time on a resumed run (so does mlflow.start_run).
            client.update_run(run_id, status="RUNNING", name=run_name)
        else:
            # What mlflow.start_run adds (user, source file, git commit); MLflow has no public name for it.
            from mlflow.tracking.context.registry import resolve_tags

            experiment_id = get_or_create_experiment(client, experiment, uri)
            run_id = client.create_run(experiment_id, tags=resolve_tags(all_tags), run_name=run_name).info.run_id

        tracker = cls(client, run_id, experiment_id, uri, flush_every_s)
        log.info("MLflow run %s: %s", run_id, ui_link(uri, experiment_id, run_id))
        if resumed:
            tracker.set_tags(all_tags)  # the new host and pid replace the dead process's
        tracker._system_monitor = start_system_metrics(run_id, uri, resumed, system_metrics)
        tracker._handles_sigterm = install_sigterm()
        return tracker

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = []
        for key, value in params.items():
            text = str(value)
            if len(text) > MAX_PARAM_VALUE_LENGTH:
                log.warning("param %s is %d characters long: truncated to MLflow's limit of %d",
                            key, len(text), MAX_PARAM_VALUE_LENGTH)
                text = text[:MAX_PARAM_VALUE_LENGTH]
            if key not in existing:
                new.append(Param(key, text))
            elif existing[key] != text:
                # A changed value (say, a resumed run with an edited config) is worth a warning, not a crashed run.
                log.warning("param %s is already %r in run %s: not changing it to %r",
                            key, existing[key], self.run_id, text)
        self.client.log_batch(self.run_id, params=new)  # MLflow splits it within its batch limits

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(str(k), _tag_value(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Collect the values; they are sent once `flush_every_s` has passed since the last send."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if key in self._rejected_keys:
                continue
            value = float(value)
            if not math.isfinite(value):
                if key not in self._nonfinite_keys:
                    self._nonfinite_keys.add(key)
                    log.warning("metric %s is %s at step %d: not logged (nor later non-finite values)",
                                key, value, step)
                continue
            self._collected.append(Metric(key, value, timestamp, int(step)))
        if time.monotonic() - self._last_send >= self.flush_every_s:
            self._send()

    def _send(self) -> None:
        """Hand the collected metrics to MLflow's background logging; returns at once."""
        self._last_send = time.monotonic()
        if not self._collected:
            return
        try:
            operations = self.client.log_batch(self.run_id, metrics=self._collected, synchronous=False)
        except Exception as e:  # kept in the collection: sent again next time
            log.warning("could not send %d metrics to MLflow (will retry): %s", len(self._collected), e)
            return
        self._sent.append((self._collected, operations))
        self._collected = []

    def flush(self) -> None:
        """Return once every metric logged so far is stored: wait for the batches sent in the background,
        then store the rest directly. What cannot be stored is kept for the next flush, with a warning."""
        self._last_send = time.monotonic()
        # Nothing leaves a list before it is settled, so a SIGTERM (Terminated) in here loses nothing.
        while self._sent:
            batch, operations = self._sent[0]
            try:
                operations.wait()
            except Exception:  # MLflow logged the error; storing the batch directly tells which kind it is
                self._collected[:0] = batch
            del self._sent[0]
        if self._collected:
            self._collected[:] = self._store_now(self._collected)

    def _store_now(self, metrics: list[Any]) -> list[Any]:
        """Store the metrics synchronously; return those to keep for the next flush. A key MLflow rejects
        (a forbidden character) is dropped: one invalid key fails a whole batch, and would on every retry."""
        error = self._store(metrics)
        if error is None:
            return []
        if not _rejected(error):
            log.warning("could not send %d metrics to MLflow (will retry): %s", len(metrics), error)
            return metrics
        by_key: dict[str, list[Any]] = {}
        for metric in metrics:
            by_key.setdefault(metric.key, []).append(metric)
        kept = []
        for key, group in by_key.items():
            error = self._store(group)
            if error is not None and _rejected(error):
                log.error("MLflow rejects metric %s, not logging it: %s", key, error)
                self._rejected_keys.add(key)
            elif error is not None:
                log.warning("could not send %d metrics to MLflow (will retry): %s", len(group), error)
                kept.extend(group)
        return kept

    def _store(self, metrics: list[Any]) -> Exception | None:
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as e:
            return e
        return None

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file, or a directory's contents, into the run's artifacts under `artifact_path`.

        As in MLflow, a file keeps its name and a directory does not: `log_artifact(ckpt,
        "checkpoints/final")` puts the checkpoint's files directly in `checkpoints/final/`.
        """
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"no file or directory to log as an artifact: {path}")

    def log_dataset(self, source: str, digest: str, context: str, **details: Any) -> None:
        """Record data the run read as a run input: `context` is "training", "validation" or "eval";
        `details` are `dataset_input`'s (data, rows, subset, split, revision). A failure is a warning."""
        try:
            self.client.log_inputs(self.run_id, datasets=[dataset_input(source, digest, context, **details)])
        except Exception as e:  # which data a run read is worth a warning, not a stopped run
            log.warning("could not log dataset %s (%s) as an input of run %s: %s", source, context, self.run_id, e)

    def save_view(self, view_id: str, view: str, charts: bool = True) -> str:
        """Save a runs-page view (`nanovlm.dashboard.runs_view`) in this run's experiment; return its link
        (to its chart view when `charts`, else to its table)."""
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG_PREFIX + view_id, view)
        return ui_link(self.tracking_uri, self.experiment_id, view=view_id, charts=charts)

    def finish(self, status: str = "FINISHED") -> None:
        """Store all metrics and set the run's final status; later calls do nothing."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, not {status!r}")
        if self.status is not None:
            return
        self.status = status
        try:
            if self._system_monitor is not None:
                self._system_monitor.finish()
            self.flush()
            if self._collected:
                log.error("%d metrics of run %s could not be sent and are lost", len(self._collected), self.run_id)
            self.client.set_terminated(self.run_id, status=status)
        finally:
            if self._handles_sigterm:
                self._handles_sigterm = False
                uninstall_sigterm()

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C, or SIGTERM through signals.Terminated
            self.finish("KILLED")
        elif issubclass(exc_type, SystemExit) and exc.code in (0, None):
            self.finish("FINISHED")
        else:
            self.finish("FAILED")
        return False  # the exception, if any, goes on


def _tag_value(value: Any) -> str:
    return str(value)[:MAX_TAG_VALUE_LENGTH]


def _rejected(error: Exception) -> bool:
    return getattr(error, "error_code", None) == "INVALID_PARAMETER_VALUE"
