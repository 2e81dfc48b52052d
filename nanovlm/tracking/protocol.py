"""The interface the training loop logs through (`Tracker`), and `NullTracker`, which records nothing.

    def train(..., tracker: Tracker = NullTracker()):
        tracker.log_metrics({"train/loss": loss}, step)

`MLflowTracker` (nanovlm/tracking/mlflow_tracker.py) is the implementation that records; a `NullTracker`
stands in for tests and for DDP ranks other than 0. No mlflow import here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")


@runtime_checkable
class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_dataset(self, source: str, digest: str, context: str, *, data: Any = None, rows: int | None = None,
                    subset: str = "", split: str = "", revision: str | None = None) -> None: ...

    def flush(self) -> None:
        """Return once every metric logged so far is stored (a checkpoint saved after it has its metrics)."""

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
