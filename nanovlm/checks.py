"""Checks of user input that run before anything starts, and the rules the training loop applies to bad data.

    check_config(cfg)                          # ConfigError naming the field, the bad value and what is allowed
    too_many_skipped(skipped, seen, 0.1)       # the max_skip_fraction rule (judged on enough samples only)
    looks_local(value)                         # a path the user meant, not a hub id (typos: "no such file")
    user_errors()                              # exception types that are the user's to fix (one line, exit 2)

A user's mistake gets one line that names the problem and the fix; tracebacks are for bugs (and
`--debug`). This module imports no torch at import time: `nanovlm.train` and the data code use it.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
from typing import Any

from nanovlm.config import SECTIONS, ConfigError, ExperimentConfig

# ----------------------------------------------------------------------------- skipped samples

MIN_SAMPLES_FOR_SKIP_LIMIT = 200  # never judge the skip fraction on fewer samples than this
EXPECTED_SKIPS_AT_LIMIT = 20  # ... nor before 20 skips would be expected at exactly the limit


def skip_judging_threshold(fraction: float) -> int:
    """Samples that must have been seen before `too_many_skipped` judges: max(200, 20 / fraction)."""
    if fraction <= 0:
        return 0  # no tolerance asked for: the first skip stops the run
    return max(MIN_SAMPLES_FOR_SKIP_LIMIT, math.ceil(EXPECTED_SKIPS_AT_LIMIT / fraction))


def too_many_skipped(skipped: int, seen: int, fraction: float) -> bool:
    """True when more than `fraction` of the `seen` samples were skipped (unreadable or too long).

    The rule: a fraction measured on a few samples says nothing (one corrupt row in the first batch
    of 16 is 6%, in the first 4 is 25%), so the limit is judged only once `seen` reaches
    max(200, 20 / fraction) samples: 200 at the default 0.1, 2000 at 0.01. A fraction of 0 means
    no skip is tolerated (the first one stops the run); 1 or more never stops it. A dataset whose
    rows are all unreadable therefore stops after 200 samples (at 0.1), not after one epoch.
    """
    if fraction >= 1 or skipped == 0:
        return False
    if seen < skip_judging_threshold(fraction):
        return False
    return skipped > fraction * seen


# ----------------------------------------------------------------------------- paths


_DATA_SUFFIXES = (".parquet", ".arrow", ".json", ".jsonl", ".csv", ".safetensors", ".bin", ".txt", ".zip", ".tar")


def looks_local(value: str) -> bool:
    """Whether a dataset / backbone name is a local path rather than a hub id (`org/name`).

    Local: starts with `.`, `/` or `~`; ends in a file suffix (.parquet, .json, ...); has two or more
    path separators; or its parent folder exists here. Hub ids have exactly one slash and none of these.
    """
    if not value:
        return False
    if value.startswith((".", "/", "~")) or value.lower().endswith(_DATA_SUFFIXES):
        return True
    if value.count("/") + (value.count(os.sep) if os.sep != "/" else 0) >= 2:
        return True
    parent = os.path.dirname(value)
    return bool(parent) and os.path.isdir(os.path.expanduser(parent))


def missing_local_path(value: str) -> str | None:
    """The expanded path when `value` looks local and does not exist, else None."""
    if looks_local(value):
        path = os.path.expanduser(value)
        if not os.path.exists(path):
            return path
    return None


# ----------------------------------------------------------------------------- the config


def _allowed(meta: dict[str, Any]) -> str:
    low, high = meta.get("min"), meta.get("max")
    extra = f" ({meta['special']})" if meta.get("special") else ""
    if low is not None and high is not None:
        return f"a number from {low} to {high}{extra}"
    if low is not None:
        return f"at least {low}{extra}"
    return f"at most {high}{extra}"


def _check_field(dotted: str, value: Any, meta: dict[str, Any]) -> None:
    """The range metadata declared on the field in nanovlm/config.py (min, max, special values, non-empty)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{dotted}={value!r}: must be a finite number"
                          + (f", {_allowed(meta)}" if "min" in meta or "max" in meta else ""))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value in meta.get("special_values", ()):
            return
        low, high = meta.get("min"), meta.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{dotted}={value!r}: must be {_allowed(meta)}")
    if isinstance(value, str) and meta.get("nonempty") and not value.strip():
        raise ConfigError(f"{dotted}={value!r}: must not be empty ({meta.get('help', '')})")


def check_config(cfg: ExperimentConfig) -> None:
    """Every value of `cfg` that can be judged before anything is built; raises ConfigError (one line:
    the field, the bad value, what is allowed). Needs no network and builds nothing."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in SECTIONS:
            for sub in dataclasses.fields(value):
                _check_field(f"{f.name}.{sub.name}", getattr(value, sub.name), dict(sub.metadata))
        else:
            _check_field(f.name, value, dict(f.metadata))
    m, d, t = cfg.model, cfg.data, cfg.train

    if any(c.isspace() for c in m.image_token):
        raise ConfigError(f"model.image_token={m.image_token!r}: must not contain spaces (it becomes one token)")
    if t.freeze_vision_encoder and t.lr_vision > 0:
        raise ConfigError(f"train.freeze_vision_encoder=true conflicts with train.lr_vision={t.lr_vision:g}: the "
                          f"encoder would be silently frozen. Drop one (lr_vision=0 also freezes it)")
    vision = 0.0 if t.freeze_vision_encoder else (t.lr_backbones if t.lr_vision < 0 else t.lr_vision)
    language = t.lr_backbones if t.lr_language < 0 else t.lr_language
    if t.lr_projector == 0 and vision == 0 and language == 0:
        raise ConfigError("every learning rate is 0 (lr_projector, and the vision and language rates): nothing "
                          "would be trained. Give at least one part a rate above 0")
    _check_device(t.device)
    if t.cuda_graphs and t.loss_kernel == "liger":
        raise ConfigError("train.loss_kernel=liger reads its target count with .item(), which a CUDA graph "
                          "capture forbids: drop --cuda_graphs, or use --loss_kernel compiled (or auto)")
    if t.cuda_graphs:
        _check_cuda_graphs(t.device)
    if t.loss_kernel == "liger":
        _check_liger(t.device)
    if t.attention == "flex_attention" and _on_cpu(t.device):
        raise ConfigError("train.attention=flex_attention: FlexAttention has no backward pass on the CPU, so it cannot "
                          "train here; use --attention auto (sdpa on the CPU, flex_attention on CUDA) or sdpa")

    if d.dataset != "synthetic":
        missing = missing_local_path(d.dataset)
        if missing:
            raise ConfigError(f"data.dataset: no such file or directory: {missing}")
    if not m.tiny:
        for name, value in (("model.vision_encoder", m.vision_encoder), ("model.language_model", m.language_model)):
            missing = missing_local_path(value)
            if missing:
                raise ConfigError(f"{name}: no such file or directory: {missing}")


def _check_device(device: str) -> None:
    name = device.strip().lower()
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"train.device={device!r}: must be auto, cpu or cuda (or cuda:N)")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={device!r}: this machine has no CUDA device (torch "
                              f"{torch.__version__}); use --device cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"train.device={device!r}: only {torch.cuda.device_count()} CUDA device(s) here")


def _on_cpu(device: str) -> bool:
    """Whether a run with this (checked) train.device trains on the CPU."""
    import torch

    return device.strip().lower() == "cpu" or not torch.cuda.is_available()


def _check_liger(device: str) -> None:
    from nanovlm.model.loss import liger_available

    if _on_cpu(device):
        raise ConfigError("train.loss_kernel=liger is a CUDA (Triton) kernel and this run is on the CPU: use "
                          "--loss_kernel auto, chunked or compiled")
    if not liger_available():
        raise ConfigError("train.loss_kernel=liger: liger-kernel is not installed (or its triton does not work): "
                          "pip install -e '.[gpu]', or use --loss_kernel auto")


def _check_cuda_graphs(device: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("train.cuda_graphs=true runs in one process (DDP's gradient all-reduce is not captured); "
                          "drop --cuda_graphs under torchrun")
    if _on_cpu(device):
        raise ConfigError(f"train.cuda_graphs=true needs a CUDA GPU, and this run is on the CPU (device={device!r}); "
                          f"drop --cuda_graphs")


# ----------------------------------------------------------------------------- errors that are the user's to fix

_DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted"}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is for the user (printed as one line, exit 2; --debug shows the
    traceback). Imported lazily: they live with the code that raises them."""
    from nanovlm.backbones import BackboneUnavailable
    from nanovlm.model.vlm import IncompatibleCheckpoint
    from nanovlm.train import NonFiniteLoss, TooManySkipped

    return (ConfigError, BackboneUnavailable, IncompatibleCheckpoint, NonFiniteLoss, TooManySkipped)


def environment_error(err: BaseException) -> str | None:
    """One line for a fault of the machine or the stores rather than of the code (full disk, read-only or
    unwritable folder, corrupt checkpoint file, unreadable or deleted MLflow store), else None (a bug)."""
    if isinstance(err, OSError) and err.errno in _DISK_ERRNOS:
        where = f": {err.filename}" if err.filename else ""
        fix = ("free some space or write elsewhere (--output_dir)" if err.errno in (errno.ENOSPC, errno.EDQUOT)
               else "make it writable or write elsewhere (--output_dir, NANOVLM_HOME)")
        return f"{_DISK_ERRNOS[err.errno]}{where}; {fix}"
    from nanovlm.tracking import TrackingError  # no mlflow import: cheap

    if isinstance(err, TrackingError):
        return _first_line(err)  # the tracker's own messages (a deleted experiment or run) say what to do
    kind = type(err).__name__
    if kind == "SafetensorError" or "safetensors" in type(err).__module__:
        return (f"a checkpoint's .safetensors file is unreadable (truncated or corrupt?): {_first_line(err)}; "
                f"resume from another checkpoint (--resume PATH) or start a new run")
    module = type(err).__module__
    if module.startswith("mlflow") or module.startswith("sqlalchemy"):
        return (f"the MLflow store ({_tracking_uri()}) failed: {_first_line(err)}. Check MLFLOW_TRACKING_URI / "
                f"NANOVLM_HOME, restore a deleted experiment (mlflow experiments restore) or use another "
                f"--experiment")
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line[:400]


def _tracking_uri() -> str:
    try:
        from nanovlm.tracking import default_tracking_uri

        return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    except Exception:  # the message must not fail
        return "MLflow"
