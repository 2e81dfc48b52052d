"""Per-item results written as they are produced, so that an evaluation killed half-way resumes.

    log = PredictionLog("out/mmstar/predictions.jsonl", key)   # key: what the items depend on
    done = log.start(n_items)          # {index: line} of the items already there (same key), else {}
    log.append([line, ...])            # one JSON line per item, flushed at once
    log.close()

`predictions.jsonl` holds one JSON object per line and item: `index` (the item's position in the
data), `id`, `output` (the reply, cut at the stop strings; null for a failed item), `extracted`,
`gold`, `score`, `correct` (and `error` for a failed item). Lines are appended in the order items
are generated (batches, by prompt length) and flushed after each batch, so a kill loses at most
the batch in flight; when the task finishes the file is rewritten in data order.

Beside it, `predictions.key.json` says what the lines depend on: the model (checkpoint folder and
its files' sizes and times), the task's definition, the data (source, split, revision,
fingerprint, file hashes, rows after --limit), a hash of all prompts and the generation settings
(max_new_tokens, greedy, stop strings), the model's dtype and device. A rerun with the same key
keeps the lines there (a line that does not parse, such as one cut by a kill, is dropped) and
generates the rest; any difference, or no key file, starts afresh, and a log line says why.
Batch size and DataLoader workers are not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("evals")

FORMAT = "nanovlm-lab evals predictions v1"


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    """The key as it reads back from JSON (tuples become lists, keys strings), for comparison."""
    return json.loads(json.dumps(json_safe(value), sort_keys=True, default=str))


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(_canonical(value), sort_keys=True).encode()).hexdigest()


def key_path(predictions: str | Path) -> Path:
    """predictions.jsonl -> predictions.key.json"""
    path = Path(predictions)
    return path.with_name(f"{path.stem}.key.json")


def checkpoint_identity(checkpoint: str | Path) -> dict[str, Any]:
    """What identifies a checkpoint's weights cheaply: its resolved folder and every file's size
    and modification time (a checkpoint rewritten in place, such as `best`, changes them); a hub
    id is its own identity."""
    path = Path(checkpoint)
    if not path.is_dir():
        return {"checkpoint": str(checkpoint)}
    files = {str(f.relative_to(path)): [f.stat().st_size, f.stat().st_mtime_ns]
             for f in sorted(path.rglob("*")) if f.is_file()}
    return {"checkpoint": str(path.resolve()), "files": files}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_lines(path: str | Path, n_items: int) -> dict[int, dict[str, Any]]:
    """The complete, parseable item lines of a predictions file by index (the last one wins);
    a line without its newline (cut by a kill) or that does not parse is dropped."""
    done: dict[int, dict[str, Any]] = {}
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return done
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # written half when the process died
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            index = item.get("index") if isinstance(item, dict) else None
            if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < n_items and "output" in item:
                done[index] = item
    return done


def write_lines(path: str | Path, lines: Iterable[dict[str, Any]]) -> None:
    """Replace the file with these lines, atomically."""
    _atomic_write(Path(path), "".join(json.dumps(json_safe(x), default=str) + "\n" for x in lines))


class PredictionLog:
    """predictions.jsonl + predictions.key.json of one evaluation (see the module doc)."""

    def __init__(self, path: str | Path, key: dict[str, Any] | None, resume: bool = True):
        self.path, self.key = Path(path), key
        self.resume = resume and key is not None  # without a model identity, never reuse lines
        self.fh: Any = None

    def _stored_key(self) -> dict[str, Any] | None:
        try:
            stored = json.loads(key_path(self.path).read_text())
        except (OSError, ValueError):
            return None
        return stored if isinstance(stored, dict) else None

    def _why_not(self, stored: dict[str, Any] | None) -> str:
        if not self.resume:
            return "resuming is off" if self.key is not None else "no model identity was given"
        if stored is None:
            return f"{key_path(self.path).name} is missing or unreadable"
        old, new = stored.get("key") or {}, _canonical(self.key)
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return f"{', '.join(differ) or 'the format'} differ(s) from the run that wrote them"

    def start(self, n_items: int) -> dict[int, dict[str, Any]]:
        """Open the log; return the items already done by an evaluation with the same key."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stored = self._stored_key() if self.resume else None
        same = (self.resume and stored is not None and stored.get("format") == FORMAT
                and stored.get("digest") == digest(self.key))
        done: dict[int, dict[str, Any]] = {}
        if same:
            done = read_lines(self.path, n_items)
            # drop anything unusable (a half-written line) before appending after it
            write_lines(self.path, done.values())
            if done:
                log.info("%s: resuming, %d of %d items already done", self.path, len(done), n_items)
        else:
            existing = self.path.exists() and self.path.stat().st_size > 0
            if existing:
                log.warning("%s: not reusing its items (%s); starting afresh", self.path, self._why_not(stored))
            self.path.unlink(missing_ok=True)  # first the lines, then the key that vouches for them
            _atomic_write(key_path(self.path), json.dumps(json_safe(
                {"format": FORMAT, "digest": digest(self.key), "key": self.key}), indent=1, default=str) + "\n")
        self.fh = open(self.path, "a")
        return done

    def append(self, lines: Iterable[dict[str, Any]]) -> None:
        for line in lines:
            self.fh.write(json.dumps(json_safe(line), default=str) + "\n")
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
