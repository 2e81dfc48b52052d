"""Where a sweep's Optuna study lives: storage URLs, database drivers, creating a store once, heartbeats.

    url = normalise_url(args.storage or default_storage(mlflow_uri))   # absolute sqlite path, or postgresql+psycopg://
    check_separate(url, mlflow_uri)       # Optuna and MLflow cannot share one database
    prepare_stores(url, mlflow_uri)       # create the schemas once, under a lock
    storage = open_storage(url, heartbeat_interval=30, grace_period=120, max_retry=3)

Why each step exists (pitfalls seen with Optuna 5 and MLflow 3):
- Both Optuna and MLflow keep an `alembic_version` table, so one database (file) cannot hold both
  stores: the default study file is `optuna.db` beside MLflow's `mlflow.db`, and on a PostgreSQL
  server they are two databases.
- Several processes creating a new sqlite store at once can crash in the schema migration, so the
  first process creates the schema while holding a lock (a file lock beside a sqlite file, as
  `nanovlm.tracking.store` does for MLflow's, an advisory lock on PostgreSQL) and the others wait for it.
- Heartbeats, which let a live worker fail and retry the trial of a worker killed with SIGKILL,
  exist only in RDB storages: only sqlite / PostgreSQL / MySQL URLs are accepted.
- SQLAlchemy's plain `postgresql://` means psycopg2; this project installs psycopg (version 3),
  so such a URL gets the `+psycopg` driver.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
import warnings
import zlib
from typing import Any, Iterator

from nanovlm.tracking.store import nanovlm_home, pinned_uri, prepare_sqlite_store, sqlite_creation_lock, sqlite_path

log = logging.getLogger("sweeps.storage")

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


class StorageError(ValueError):
    """A storage URL that cannot work; the message says what to use instead."""


def default_storage(mlflow_uri: str) -> str:
    """`optuna.db` beside MLflow's sqlite file; else in $NANOVLM_HOME or the current directory."""
    mlflow_db = sqlite_path(mlflow_uri)
    if mlflow_db is not None:
        folder = mlflow_db.resolve().parent
    else:
        folder = nanovlm_home()
    return f"sqlite:///{(folder / 'optuna.db').as_posix()}"


def normalise_url(url: str) -> str:
    """An absolute sqlite path, or a PostgreSQL URL with an installed driver; anything else is an error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if url.startswith("postgres://"):  # Heroku-style alias SQLAlchemy does not accept
        url = "postgresql://" + url[len("postgres://"):]
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(f"--storage {url!r} is not a database URL; use sqlite:////abs/path/optuna.db or "
                           f"postgresql://user:password@host:5432/optuna") from None
    backend = parsed.get_backend_name()
    if backend not in RDB_SCHEMES:
        raise StorageError(f"--storage {redact(url)!r}: only relational databases (sqlite, postgresql, mysql) are "
                           f"supported: heartbeats, which retry the trials of killed workers, need one")
    if backend == "sqlite":
        if sqlite_path(url) is None:
            raise StorageError(f"--storage {redact(url)!r}: an in-memory database cannot be shared or resumed; "
                               f"give a file")
        return pinned_uri(url)  # relative to the cwd would mean another file from another directory
    if backend == "postgresql":
        driver = parsed.get_driver_name()
        has_v3, has_v2 = (importlib.util.find_spec(m) is not None for m in ("psycopg", "psycopg2"))
        if "+" not in parsed.drivername:  # SQLAlchemy's default is psycopg2
            if has_v3 or not has_v2:
                parsed = parsed.set(drivername="postgresql+psycopg")
                driver = "psycopg"
        available = {"psycopg": has_v3, "psycopg2": has_v2}.get(driver, True)
        if not available:
            raise StorageError("--storage: PostgreSQL needs a driver; install it with: pip install 'psycopg[binary]'")
        return parsed.render_as_string(hide_password=False)
    return url


def normalise_tracking_uri(uri: str) -> str:
    """MLflow can also use a PostgreSQL database directly: give it the installed driver, as above."""
    if uri.startswith(("postgres://", "postgresql://")):
        return normalise_url(uri)
    return uri


def redact(url: str) -> str:
    """The URL without its password, for logs, tags and printed summaries."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def _database_identity(url: str) -> tuple | None:
    """What makes two URLs the same database: the sqlite file, or (backend, host, port, database)."""
    path = sqlite_path(url)
    if path is not None:
        return ("sqlite", str(path.resolve()))
    if url.startswith(("http://", "https://", "file:", "databricks")) or "://" not in url:
        return None  # an MLflow server or file store: not a database we could share
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    except Exception:
        return None
    return (parsed.get_backend_name(), parsed.host or "localhost", parsed.port, parsed.database)


def check_separate(storage_url: str, mlflow_uri: str) -> None:
    """Optuna and MLflow both keep an `alembic_version` table: one database cannot hold both."""
    ours = _database_identity(storage_url)
    if ours is not None and ours == _database_identity(mlflow_uri):
        raise StorageError(
            f"--storage {redact(storage_url)} is the MLflow store's database. Optuna and MLflow both keep an "
            f"alembic_version table, so they need separate databases: e.g. optuna.db beside mlflow.db, or two "
            f"databases (CREATE DATABASE optuna; CREATE DATABASE mlflow) on one PostgreSQL server")


@contextlib.contextmanager
def creation_lock(url: str, timeout_s: float = 600) -> Iterator[None]:
    """Held while a store's schema is created: one creator, the others wait and then find it made."""
    path = sqlite_path(url)
    if path is not None:
        with sqlite_creation_lock(path):
            yield
        return
    if url.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        key = zlib.crc32(b"nanovlm-sweeps-schema")  # any constant: all workers must use the same one
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        engine.dispose()
        return
    yield  # MySQL: Optuna's own migration; start one worker first if it races


def prepare_stores(storage_url: str, mlflow_uri: str) -> None:
    """Create the Optuna schema, and MLflow's when it is a sqlite file, once, under a lock each (an MLflow
    server creates its own schema once, at start)."""
    import optuna

    started = time.monotonic()
    with creation_lock(storage_url):
        storage = optuna.storages.RDBStorage(storage_url, engine_kwargs=_engine_kwargs(storage_url))
        storage.remove_session()
        storage.engine.dispose()
    prepare_sqlite_store(mlflow_uri)
    log.debug("stores ready in %.1f s", time.monotonic() - started)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Workers on one sqlite file wait for each other's writes instead of failing at once.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}  # a sweep runs for hours: reconnect after a dropped connection


def retry_callback(max_retry: int | None) -> tuple[str, Any]:
    """(RDBStorage keyword, callback) that queues a copy of a failed trial, under this Optuna's names."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            from optuna.storages import RetryHeartbeatStaleTrialCallback
        except ImportError:  # Optuna < 4.9 (RetryFailedTrialCallback is deprecated since)
            from optuna.storages import RetryFailedTrialCallback

            return "failed_trial_callback", RetryFailedTrialCallback(max_retry=max_retry)
        return "heartbeat_stale_trial_callback", RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def open_storage(url: str, heartbeat_interval: int, grace_period: int | None, max_retry: int | None) -> Any:
    """An RDB storage whose running trials beat every `heartbeat_interval` s; a trial silent for
    `grace_period` s (its worker died) is failed by the next worker and retried up to `max_retry` times."""
    import optuna

    keyword, callback = retry_callback(max_retry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=heartbeat_interval,
                                          grace_period=grace_period, **{keyword: callback})
