"""Experiment tracking: the small interface the training loop logs through, and its MLflow backend.

    with MLflowTracker.start("smoke", run_name="siglip-smollm") as tracker:
        tracker.log_params({"train.lr_mp": 5e-3, "model.language_model": "smollm"})
        tracker.log_dataset("synthetic", "3f2a9c1e", "training", data=train_records)  # a run input
        for step in range(steps):
            tracker.log_metrics({"train/loss": loss}, step=step)   # buffered: cheap every step
        tracker.log_artifact("checkpoints/step-100")               # a file or a directory
    # normal exit -> FINISHED, an exception -> FAILED, Ctrl-C or SIGTERM -> KILLED

    tracker = NullTracker()                   # same interface, does nothing (tests, DDP ranks > 0)
    mark_orphans_killed("smoke")              # runs left RUNNING by a SIGKILLed process -> KILLED

The training loop only sees `Tracker`; this is the only module in `nanovlm/` that imports mlflow,
and it does so lazily, so `import nanovlm.tracking` stays cheap.

Where runs go: `default_tracking_uri()` is `$MLFLOW_TRACKING_URI` if set, else an absolute
`sqlite:////.../mlflow.db` in `$NANOVLM_HOME` (or the current directory). MLflow's own default is
relative to the working directory, so starting from another directory silently means another
database; an absolute URI does not, and `tracker.tracking_uri` records it. Artifacts of a new
experiment in a sqlite store go to `mlartifacts/` beside the database, for the same reason.

Every experiment is created (or, made by an older version, completed) with the tags of
`nanovlm.dashboard`: the UI opens it on its runs, with a "Training curves" saved view.

Choices worth knowing:
- Everything goes through an explicit `MlflowClient(tracking_uri)`, never the fluent API's global
  active-run stack, so sequential runs, nested runs (a sweep's trials under an open parent) and
  resumed runs in one process do not interfere with each other or with other code using mlflow.
  System metrics therefore come from MLflow's `SystemMetricsMonitor`, started here by run id (what
  `mlflow.start_run(log_system_metrics=True)` does internally).
- Metrics are buffered and sent with `log_batch` every `flush_every_s` seconds, on `flush()` and on
  `finish()`: one call per metric against sqlite costs milliseconds, too much for every step.
  A failed send is retried at the next flush, so a tracking hiccup never stops training; a key
  MLflow rejects (a forbidden character) is dropped, with an error, without losing the others.
- Non-finite metric values are skipped, with one warning per key: MLflow stores NaN, but it stores
  +-inf as +-1.8e308, which is a misleading number on a chart.
- Datasets are run inputs (the runs table's Dataset column; `dataset.digest = '<fingerprint>'`
  in the search box finds the runs that read it). MLflow keeps one dataset per (experiment, name,
  digest), so the name carries the split: `synthetic:training`, `synthetic:validation`,
  `Lin-Chen/MMStar:val[:100]`.
- Params are strings and immutable in MLflow. Re-logging the same value (a resumed run) is a no-op;
  a different value for an existing key is skipped with a warning instead of failing the run.
- While a tracker is open in the main thread, SIGTERM raises `Terminated` (a KeyboardInterrupt),
  so the `with` block marks the run KILLED instead of leaving it RUNNING forever. SIGKILL cannot be
  caught: `mark_orphans_killed` cleans up after it, using the `nanovlm.host` and `nanovlm.pid` tags.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nanovlm.dashboard import VIEW_TAG_PREFIX, experiment_tags, ui_link

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation), copied so that importing this module stays cheap.
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
HOST_TAG = "nanovlm.host"
PID_TAG = "nanovlm.pid"
PARENT_TAG = "mlflow.parentRunId"  # what MLflow's UI uses to nest runs


@runtime_checkable
class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dataset(self, source: str, digest: str, context: str, *, data: Any = None, rows: int | None = None,
                    subset: str = "", split: str = "", revision: str | None = None) -> None: ...

    def flush(self) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """A tracker that records nothing: for tests and for DDP ranks other than 0."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_dataset(self, source: str, digest: str, context: str, **details: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM while an MLflowTracker is open."""


def default_tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, else an absolute sqlite URI in `$NANOVLM_HOME` or the current dir."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = Path(os.environ.get("NANOVLM_HOME") or os.getcwd()).expanduser().resolve()
    return f"sqlite:///{(home / 'mlflow.db').as_posix()}"  # the path's own "/" makes it sqlite:////


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def _pinned_uri(uri: str) -> str:
    """Make a relative sqlite URI absolute, so the run records where it really is."""
    path = _sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[1] + uri.partition("?")[2]
    return f"sqlite:///{path.resolve().as_posix()}{query}"


def _client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    from mlflow import MlflowClient

    uri = _pinned_uri(tracking_uri or default_tracking_uri())
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)  # sqlite creates the file, not its directory
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    if db is not None and uri not in _prepared_stores:
        return _open_sqlite_store(uri, db), uri
    return MlflowClient(tracking_uri=uri), uri


_prepared_stores: set[str] = set()  # sqlite URIs this process has opened (created / migrated) already
_checked_servers: set[str] = set()
SERVER_TIMEOUT_S = 5.0


def _open_sqlite_store(uri: str, db: Path) -> MlflowClient:
    """The first client of a sqlite store in this process, made under `<db>.lock`: MLflow creates the
    tables of a new database (its schema migration) when a client first opens the store, and two
    processes doing that at once crash one of them and can leave the database half made. Under the
    lock the second one finds the tables there. MLflow caches the store, so later clients skip this."""
    from mlflow import MlflowClient

    from nanovlm.files import file_lock

    with file_lock(db.with_name(db.name + ".lock")):
        client = MlflowClient(tracking_uri=uri)
        client._tracking_client.store  # noqa: B018 - built in the constructor today; make sure it is built here
    _prepared_stores.add(uri)
    return client


def check_server(uri: str, timeout_s: float = SERVER_TIMEOUT_S) -> None:
    """Fail fast, with one line, when the tracking server at `uri` does not answer (MLflow's own
    client retries for minutes before it gives up). Any HTTP answer counts as reachable, except a
    proxy's 502/503/504 (the server behind it is down)."""
    if uri in _checked_servers:
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()
    except urllib.error.HTTPError as e:
        if e.code not in (502, 503, 504):
            _checked_servers.add(uri)
            return
        reason = f"HTTP {e.code}"
    except (OSError, ValueError) as e:  # refused, timed out, unknown host, bad URL
        reason = str(getattr(e, "reason", None) or e)
    else:
        _checked_servers.add(uri)
        return
    raise RuntimeError(f"the MLflow tracking server at {uri} does not answer ({reason}): start it with "
                       f"`mlflow server ...` or unset MLFLOW_TRACKING_URI")


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """Look up the experiment, creating it if missing (another process may be creating it too)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        db = _sqlite_path(tracking_uri)
        # A sqlite store's default artifact root is relative to the working directory; a server
        # (http...) decides for itself.
        location = (db.parent / "mlartifacts").as_uri() if db is not None else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=experiment_tags())
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)  # lost the race: use the winner's
    if experiment.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"MLflow experiment {name!r} is deleted (in {tracking_uri}); restore it with "
            f"`mlflow experiments restore` or choose another name"
        )
    # One made before these tags existed (or by hand) gets the missing ones; a kind or view
    # someone changed stays as it is.
    for key, value in experiment_tags().items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


MAX_DIGEST_LENGTH = 36  # MLflow's limit (a VARCHAR(36) column)


def _hub_revision(data: Any) -> str | None:
    """The commit of a hub dataset as `datasets` cached it (its cache folder is named by the commit)."""
    for cached in getattr(data, "cache_files", None) or []:
        folder = Path(cached.get("filename", "")).parent.name
        if re.fullmatch(r"[0-9a-f]{40}", folder):
            return folder
    return None


def dataset_input(source: str, digest: str, context: str, *, data: Any = None, rows: int | None = None,
                  subset: str = "", split: str = "", revision: str | None = None) -> Any:
    """An MLflow run input (`DatasetInput`) for data read from `source`: "synthetic", a hub id or a path.

    `data` (the records, a `datasets.Dataset`) supplies the row count and a hub revision when
    they are not given. The dataset is named `<source>:<split or context>`: MLflow keeps one
    dataset per (experiment, name, digest), and the splits of one source share its fingerprint.
    """
    import warnings

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if rows is None and data is not None and hasattr(data, "__len__"):
        rows = len(data)
    profile: dict[str, Any] = {"num_rows": rows} if rows is not None else {}
    if source == "synthetic":
        origin = CodeDatasetSource({"generator": "nanovlm.data.synthetic"})
    elif os.path.exists(source):
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
            warnings.simplefilter("ignore")
            origin = resolve_dataset_source(Path(source).resolve().as_uri())
    else:
        revision = revision or _hub_revision(data)
        origin = HuggingFaceDatasetSource(source, config_name=subset or None, split=split or None, revision=revision)
        if revision:
            profile["revision"] = revision
    if len(digest) > MAX_DIGEST_LENGTH:  # a stream's fingerprint names the stream: shortened, kept in the profile
        profile["fingerprint"] = digest
        digest = hashlib.sha256(digest.encode()).hexdigest()[:16]
    fields = MetaDataset(origin, name=f"{source}:{split or context}", digest=digest).to_dict()
    dataset = Dataset(**fields, profile=json.dumps(profile) if profile else None)
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def _system_metrics_enabled(requested: bool | None) -> bool:
    has_psutil = importlib.util.find_spec("psutil") is not None
    if requested is None:
        env = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower()
        return has_psutil and env not in ("false", "0")
    if requested and not has_psutil:
        log.warning("system metrics need psutil, which is not installed: not logging them")
        return False
    return requested


def _start_system_metrics(run_id: str, tracking_uri: str, resumed: bool) -> Any:
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as e:  # an internal MLflow API: losing system metrics must not stop training
        log.warning("could not start MLflow system metrics: %s", e)
        return None


# SIGTERM handling is shared by all open trackers (a sweep's parent and its current trial): the
# handler is installed when the first one opens and the previous one restored when the last closes.
_sigterm_users = 0
_previous_sigterm: Any = None


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated("SIGTERM received")


def _install_sigterm() -> bool:
    global _sigterm_users, _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        return False  # Python only lets the main thread set signal handlers
    if _sigterm_users == 0:
        _previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_terminated)
    _sigterm_users += 1
    return True


def _uninstall_sigterm() -> None:
    global _sigterm_users
    _sigterm_users -= 1
    if _sigterm_users == 0:
        # None means a handler not set from Python: the default is the closest we can restore.
        previous = signal.SIG_DFL if _previous_sigterm is None else _previous_sigterm
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            log.warning("tracker finished outside the main thread: SIGTERM handler left in place")


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
        self._buffer: list[Any] = []  # mlflow.entities.Metric, oldest first
        self._last_flush = time.monotonic()
        self._nonfinite_keys: set[str] = set()
        self._rejected_keys: set[str] = set()  # keys MLflow refused: not buffered any more
        self._system_monitor: Any = None  # mlflow's SystemMetricsMonitor, when on
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
        client, uri = _client(tracking_uri)
        all_tags = {str(k): v for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        # Who runs it, so that mark_orphans_killed can tell a live run from a dead one.
        all_tags[HOST_TAG] = socket.gethostname()
        all_tags[PID_TAG] = os.getpid()

        resumed = bool(run_id)
        if resumed:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage == "deleted":
                raise RuntimeError(f"cannot resume MLflow run {run_id}: it is deleted")
            experiment_id = run.info.experiment_id
            expected = client.get_experiment_by_name(experiment)
            if expected is None or expected.experiment_id != experiment_id:
                log.warning("resuming run %s, which belongs to experiment id %s, not %r",
                            run_id, experiment_id, experiment)
            # MLflow keeps the old end_time on a resumed run (so does mlflow.start_run).
            client.update_run(run_id, status="RUNNING", name=run_name)
        else:
            from mlflow.tracking.context.registry import resolve_tags

            experiment_id = _experiment_id(client, experiment, uri)
            # resolve_tags adds what mlflow.start_run would: user, source file, git commit.
            run_tags = resolve_tags({k: _tag_value(v) for k, v in all_tags.items()})
            run_id = client.create_run(experiment_id, tags=run_tags, run_name=run_name).info.run_id

        tracker = cls(client, run_id, experiment_id, uri, flush_every_s)
        log.info("MLflow run %s: %s", run_id, ui_link(uri, experiment_id, run_id))
        if resumed:
            tracker.set_tags(all_tags)  # the new host and pid replace the dead process's
        if _system_metrics_enabled(system_metrics):
            tracker._system_monitor = _start_system_metrics(run_id, uri, resumed)
        tracker._handles_sigterm = _install_sigterm()
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
                # MLflow params are immutable; a changed value (say, a resumed run with an edited
                # config) is worth a warning, not a crashed run.
                log.warning("param %s is already %r in run %s: not changing it to %r",
                            key, existing[key], self.run_id, text)
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i:i + MAX_PARAMS_TAGS_PER_BATCH])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), _tag_value(v)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[i:i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer the values; they are sent once `flush_every_s` has passed since the last send."""
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
            self._buffer.append(Metric(key, value, timestamp, int(step)))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Send the buffered metrics now. A failed send is kept for the next flush, not raised."""
        self._last_flush = time.monotonic()
        while self._buffer:
            chunk = self._buffer[:MAX_METRICS_PER_BATCH]
            try:
                self._send(chunk)
            except Exception as e:  # a locked database, an unreachable server: try again later
                log.warning("could not send %d metrics to MLflow (will retry): %s", len(self._buffer), e)
                return
            del self._buffer[:len(chunk)]

    def _send(self, chunk: list[Any]) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.log_batch(self.run_id, metrics=chunk)
            return
        except MlflowException as e:
            if e.error_code != "INVALID_PARAMETER_VALUE":
                raise
        # One invalid key (a forbidden character, say) fails the whole batch, and would on every
        # retry: send key by key, and drop the keys MLflow rejects for the rest of the run.
        by_key: dict[str, list[Any]] = {}
        for metric in chunk:
            by_key.setdefault(metric.key, []).append(metric)
        for key, metrics in by_key.items():
            try:
                self.client.log_batch(self.run_id, metrics=metrics)
            except MlflowException as e:
                if e.error_code != "INVALID_PARAMETER_VALUE":
                    raise
                log.error("MLflow rejects metric %s, not logging it: %s", key, e)
                self._rejected_keys.add(key)

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
        """Send what is buffered and set the run's final status; later calls do nothing."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, not {status!r}")
        if self.status is not None:
            return
        self.status = status
        try:
            if self._system_monitor is not None:
                self._system_monitor.finish()
            self.flush()
            if self._buffer:
                log.error("%d metrics of run %s could not be sent and are lost", len(self._buffer), self.run_id)
            self.client.set_terminated(self.run_id, status=status)
        finally:
            if self._handles_sigterm:
                self._handles_sigterm = False
                _uninstall_sigterm()

    def __enter__(self) -> MLflowTracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C, or SIGTERM through Terminated
            self.finish("KILLED")
        elif issubclass(exc_type, SystemExit) and exc.code in (0, None):
            self.finish("FINISHED")
        else:
            self.finish("FAILED")
        return False  # the exception, if any, goes on


def _tag_value(value: Any) -> str:
    return str(value)[:MAX_TAG_VALUE_LENGTH]


def _pid_alive(pid: int) -> bool:
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True
    try:
        # A killed child its parent has not reaped yet is a zombie: dead for our purpose.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def mark_orphans_killed(experiment: str, tracking_uri: str | None = None) -> list[str]:
    """Set RUNNING runs of this host whose process is gone to KILLED; return their ids.

    A process killed with SIGKILL (or the OOM killer) cannot end its run, which then stays RUNNING
    forever. Runs from other hosts are left alone: their processes cannot be checked from here.
    A reused pid makes a dead run look alive, which errs on the safe side.
    """
    client, _ = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    # Collect first, then change: ending runs while paging would shift the pages under us.
    running, page_token = [], None
    while True:
        page = client.search_runs([found.experiment_id], query, page_token=page_token)
        running.extend(page)
        page_token = page.token
        if not page_token:
            break
    killed = []
    for run in running:
        try:
            pid = int(run.data.tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if not _pid_alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
    if killed:
        log.info("marked %d orphaned runs of experiment %r KILLED: %s", len(killed), experiment, killed)
    return killed
