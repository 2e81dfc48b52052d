"""Crash-safe file output: a directory appears complete or not at all.

    with atomic_directory(Path("ckpt/step-100")) as tmp:
        (tmp / "model.safetensors").write_bytes(...)
    # now ckpt/step-100 holds everything, or (after a crash) still its previous content

    with file_lock(Path("mlflow.db.lock")):      # blocking, exclusive (fcntl), across processes
        ...
    held = try_lock(run_dir / ".lock")          # non-blocking: a HeldLock, or raises LockBusy(pid)
    held.release()
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target` by rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
        os.rename(tmp, target)  # the commit point
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `path` (created if missing), waiting for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class LockBusy(OSError):
    """Another process holds the lock; `pid` is the one it wrote into the lock file (None if unknown)."""

    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path} is locked by another process (pid {pid if pid is not None else 'unknown'})")
        self.path, self.pid = path, pid


class HeldLock:
    """An exclusive lock taken by `try_lock`; released by `release()` or when the process ends."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def try_lock(path: str | Path) -> HeldLock:
    """Take an exclusive fcntl lock on `path` without waiting, and write this pid into the file.

    Raises LockBusy with the holder's pid when another process (or another open of the file) holds it.
    The lock dies with the process, so a killed run never leaves a stale lock behind.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockBusy(path, _read_pid(path)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return HeldLock(path, fd)


def _read_pid(path: Path) -> int | None:
    # The holder writes its pid right after locking: give it a moment when the file is still empty.
    for _ in range(20):
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return None
