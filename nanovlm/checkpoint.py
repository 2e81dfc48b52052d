"""Training checkpoints: everything needed to continue a run exactly, written atomically.

    path = save_training_checkpoint(run_dir, model, optimizer, state, keep=2)
    state = load_training_checkpoint(path, model, optimizer)   # weights, optimizer, RNG restored
    latest_checkpoint(run_dir)                                  # newest step-N folder or None
    path, skipped = latest_complete_checkpoint(run_dir)         # newest one that checks out, and why others did not

A checkpoint folder `checkpoints/step-000100/` is a loadable model checkpoint (config.json,
model.safetensors, tokenizer, preprocessor_config.json, meta.json) plus optimizer.safetensors,
optimizer.json, rng.safetensors and trainer_state.json. Nothing is pickled: tensors go to
safetensors, everything else to JSON. The best model (by validation loss) is `checkpoints/best/`.

`manifest.json`, written last inside the atomic directory, lists every file with its size (and the
sha256 of the small JSON / text files), so `checkpoint_problem` checks that a checkpoint is complete
instead of assuming it. A checkpoint written before manifests existed counts as complete when its
trainer_state.json and model.safetensors are there.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nanovlm.files import atomic_directory, read_json, sha256_file, write_json

STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
HASHED_SUFFIXES = (".json", ".txt", ".jinja")  # small files: sha256 as well as the size
HASH_LIMIT_BYTES = 1 << 20
REQUIRED = ("trainer_state.json", "model.safetensors")


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    samples_seen: int = 0  # this rank's data position: samples consumed (packing consumes unevenly over ranks)
    positions: list[int] = field(default_factory=list)  # every rank's samples_seen, gathered at a checkpoint
    best_val_loss: float = float("inf")
    best_score: float | None = None  # the best_metric's value at checkpoints/best
    skipped: int = 0  # samples dropped as unreadable or too long
    run_id: str | None = None  # MLflow run, continued on resume
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[list[float]]] = field(default_factory=dict)  # metric -> [[step, value], ...]

    def meta(self, **extra: Any) -> dict[str, Any]:
        """What a checkpoint's meta.json says about the run that wrote it."""
        return {"run_id": self.run_id, "step": self.step, "preset": self.config.get("preset"), **extra}

    def record(self, name: str, step: int, value: float) -> None:
        self.history.setdefault(name, []).append([step, value])


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    steps = [(int(m.group(1)), p) for p in checkpoint_dir(Path(run_dir)).glob("step-*") if (m := STEP_DIR.match(p.name))]
    return max(steps)[1] if steps else None


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    return sorted((int(m.group(1)), p) for p in checkpoint_dir(Path(run_dir)).glob("step-*")
                  if (m := STEP_DIR.match(p.name)) and p.is_dir())


def write_manifest(path: Path) -> None:
    """List every file of the checkpoint folder `path` (sizes; sha256 of the small text files)."""
    files: dict[str, dict[str, Any]] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST):
        entry: dict[str, Any] = {"size": file.stat().st_size}
        if file.suffix in HASHED_SUFFIXES and entry["size"] <= HASH_LIMIT_BYTES:
            entry["sha256"] = sha256_file(file)
        files[file.relative_to(path).as_posix()] = entry
    write_json(path / MANIFEST, {"version": 1, "files": files})


def checkpoint_problem(path: str | Path) -> str | None:
    """None when the training checkpoint at `path` is complete, else what is wrong with it (one line)."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    manifest = path / MANIFEST
    if not manifest.exists():  # written before manifests: the two files resuming cannot do without
        missing = [name for name in REQUIRED if not (path / name).is_file()]
        return f"{', '.join(missing)} missing" if missing else None
    try:
        files = read_json(manifest)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} unreadable ({e})"
    for name, entry in files.items():
        file = path / name
        try:
            size = file.stat().st_size
            if size != entry.get("size"):
                return f"{name} is {size} bytes, expected {entry.get('size')} (truncated or overwritten?)"
            if "sha256" in entry and sha256_file(file) != entry["sha256"]:
                return f"{name} does not match its sha256 in {MANIFEST}"
        except FileNotFoundError:
            return f"{name} missing"
        except OSError as e:
            return f"{name} unreadable ({e})"
    missing = [name for name in REQUIRED if name not in files]
    return f"{', '.join(missing)} missing" if missing else None


def latest_complete_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete step-N folder (or None), and the newer ones skipped with their problems."""
    skipped = []
    for _, path in reversed(_step_dirs(Path(run_dir))):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors = {f"{pid}.{key}": (value if torch.is_tensor(value) else torch.tensor(value)).contiguous()
               for pid, st in sd["state"].items() for key, value in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    # How the optimizer runs (fused kernel, foreach) is this process's choice, not saved state: an
    # older checkpoint's `fused: None` must not switch off the fused AdamW that skips NaN steps.
    how = [{k: g[k] for k in ("fused", "foreach", "capturable") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for group, keep in zip(optimizer.param_groups, how):
        group.update(keep)


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    np_state = np.random.get_state()
    return tensors, {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


def save_training_checkpoint(run_dir: str | Path, model: Any, optimizer: torch.optim.Optimizer, state: TrainerState,
                             keep: int = 2) -> Path:
    """Write checkpoints/step-N atomically (manifest last), check it, then prune all but the newest `keep`.

    Older checkpoints are removed only once the new one is in place and checks out; folders of later
    steps (an abandoned timeline after resuming from an earlier checkpoint) are left alone."""
    path = checkpoint_dir(Path(run_dir)) / f"step-{state.step:06d}"
    with atomic_directory(path) as tmp:
        model.write_files(tmp, meta=state.meta())
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "optimizer.json", meta)
        rng_tensors, rng_meta = _rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        write_json(tmp / "rng.json", rng_meta)
        write_json(tmp / "trainer_state.json", asdict(state))
        write_manifest(tmp)  # last: a folder with a valid manifest holds everything it lists
    problem = checkpoint_problem(path)
    if problem is not None:  # never prune the previous checkpoints for one that is not whole
        raise OSError(f"checkpoint {path} was written but is incomplete: {problem}")
    steps = [p for step, p in _step_dirs(Path(run_dir)) if step <= state.step]
    for old in steps[: max(0, len(steps) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_trainer_state(path: str | Path) -> TrainerState:
    return TrainerState(**read_json(Path(path) / "trainer_state.json"))


def load_training_checkpoint(path: str | Path, model: Any, optimizer: torch.optim.Optimizer) -> TrainerState:
    """Restore weights, optimizer and RNG state in place; returns where training stopped."""
    from safetensors.torch import load_model

    path = Path(path)
    load_model(model, str(path / "model.safetensors"), strict=True, device=str(next(model.parameters()).device))
    _load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), read_json(path / "optimizer.json"))
    _set_rng_state(load_file(str(path / "rng.safetensors")), read_json(path / "rng.json"))
    return read_trainer_state(path)


def save_best(run_dir: str | Path, model: Any, meta: dict[str, Any]) -> Path:
    return model.save_pretrained(checkpoint_dir(Path(run_dir)) / "best", meta=meta)
