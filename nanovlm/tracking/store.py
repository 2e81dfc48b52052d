"""Where runs go: the MLflow store URI, its sqlite file, creating a new sqlite store once, checking a server.

    uri = default_tracking_uri()          # $MLFLOW_TRACKING_URI, else sqlite:////<$NANOVLM_HOME or cwd>/mlflow.db
    client, uri = open_client(uri)        # an MlflowClient on the store, made ready to use
    sqlite_path(uri)                      # the database file of a sqlite URI, else None

MLflow's own default store is relative to the working directory, so starting from another directory
silently means another database; an absolute URI does not, and a relative sqlite URI is made absolute
(`pinned_uri`). `sweeps/storage.py` uses the same helpers for the Optuna study's database.

Opening a store does what MLflow alone gets wrong:
- sqlite creates the database file but not its folder: the folder is made.
- MLflow creates the tables of a new sqlite database (its schema migration) when a client first uses it,
  and two processes doing that at once crash one of them and can leave the database half made, so the
  first use happens under `<db>.lock` (`prepare_sqlite_store`); the second process finds the tables made.
- MLflow's client retries an unreachable server for minutes: `check_server` fails in seconds, with one line.
No mlflow import at module level: `import nanovlm.tracking` stays cheap.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from mlflow import MlflowClient

SERVER_TIMEOUT_S = 5.0

_prepared_stores: set[str] = set()  # sqlite URIs this process has opened (created / migrated) already
_checked_servers: set[str] = set()


class TrackingError(RuntimeError):
    """A problem with the MLflow store that its message says how to fix (one line, no traceback needed)."""


def nanovlm_home() -> Path:
    """Where the default stores live: `$NANOVLM_HOME`, else the current directory (absolute)."""
    return Path(os.environ.get("NANOVLM_HOME") or os.getcwd()).expanduser().resolve()


def default_tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, else an absolute sqlite URI in `nanovlm_home()`."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(nanovlm_home() / 'mlflow.db').as_posix()}"  # the path's own "/" makes it sqlite:////


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def pinned_uri(uri: str) -> str:
    """A relative sqlite URI made absolute (its query kept), so the URI says where the file really is."""
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    _, mark, query = uri.partition("?")
    return f"sqlite:///{path.resolve().as_posix()}{mark}{query}"


@contextmanager
def sqlite_creation_lock(db: Path) -> Iterator[None]:
    """Held while a sqlite database's schema is created: `<db>.lock`, beside it (its folder made)."""
    from nanovlm.files import file_lock

    with file_lock(db.with_name(db.name + ".lock")):
        yield


def prepare_sqlite_store(uri: str) -> None:
    """Make the MLflow tables of a sqlite store, once per process, under `sqlite_creation_lock`; MLflow
    caches the store it opened, so later clients in this process find it ready."""
    from mlflow import MlflowClient

    uri = pinned_uri(uri)
    db = sqlite_path(uri)
    if db is None or uri in _prepared_stores:
        return
    with sqlite_creation_lock(db):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # the first use creates the tables
    _prepared_stores.add(uri)


def check_server(uri: str, timeout_s: float = SERVER_TIMEOUT_S) -> None:
    """Fail fast, with one line, when the tracking server at `uri` does not answer (MLflow's own
    client retries for minutes before it gives up). Any HTTP answer counts as reachable, except a
    proxy's 502/503/504 (the server behind it is down)."""
    if uri in _checked_servers:
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError as e:
        if e.code in (502, 503, 504):
            _raise_unreachable(uri, f"HTTP {e.code}")
    except (OSError, ValueError) as e:  # refused, timed out, unknown host, bad URL
        _raise_unreachable(uri, str(getattr(e, "reason", None) or e))
    _checked_servers.add(uri)


def _raise_unreachable(uri: str, reason: str) -> None:
    raise TrackingError(f"the MLflow tracking server at {uri} does not answer ({reason}): start it with "
                        f"`mlflow server ...` or unset MLFLOW_TRACKING_URI")


def open_client(tracking_uri: str | None = None) -> tuple[MlflowClient, str]:
    """(an MlflowClient on the store, its pinned URI): default store if None, sqlite folder and tables made,
    a server checked."""
    from mlflow import MlflowClient

    uri = pinned_uri(tracking_uri or default_tracking_uri())
    if sqlite_path(uri) is not None:
        prepare_sqlite_store(uri)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    return MlflowClient(tracking_uri=uri), uri
