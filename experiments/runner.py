"""The composition root: one experiment config -> a trained, evaluated, tracked checkpoint.

    result = run_experiment(get_preset("tiny"))                 # -> RunResult(run_id, checkpoint, metrics)
    result = run_experiment(cfg, resume="latest")               # continue the newest run of this name
    result = run_experiment(cfg, parent_run_id=sweep_run_id)    # a nested MLflow run (sweeps)
    run_experiment(cfg, on_run_started=ids.append)              # the MLflow run id as soon as the run exists

Builds one thing per block and logs what it built: tracker, model, data, training, evaluation,
artifacts. Importable (sweeps call it); `experiments/run.py` is only its command line.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from evals.during_training import build_evaluator
from experiments.presets import get_preset
from nanovlm import metrics as metric_names
from nanovlm import plots
from nanovlm.checkpoint import checkpoint_problem, latest_checkpoint, latest_complete_checkpoint, read_trainer_state
from nanovlm.config import ConfigError, ExperimentConfig, diff, flatten, from_dict, write_config
from nanovlm.data.datasets import SampleProcessor, StreamingVQA, VQADataset, load_splits
from nanovlm.distributed import Dist
from nanovlm.files import HeldLock, LockBusy, try_lock, write_json
from nanovlm.model.vlm import build_vlm, check_compatible
from nanovlm.provenance import device_description, git_sha, library_versions
from nanovlm.tracking import MLflowTracker, NullTracker, mark_orphans_killed
from nanovlm.train import pick_device, train

log = logging.getLogger("nanovlm.runner")
ARTIFACT_LIMIT_BYTES = 200 * 2**20  # checkpoints above this are recorded as paths (tags), not copied


@dataclass
class RunResult:
    run_id: str | None
    run_dir: Path
    checkpoint: Path  # the final step's checkpoint (a loadable model)
    best_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        keys = [metric_names.TRAIN_LOSS, metric_names.VAL_LOSS, metric_names.BEST_VAL_LOSS]
        keys += sorted(k for k in self.metrics if k.startswith("eval/"))
        shown = ", ".join(f"{k}={self.metrics[k]:.4g}" for k in keys if k in self.metrics)
        return f"{shown}; checkpoint {self.checkpoint}"


def default_run_name(cfg: ExperimentConfig) -> str:
    """The preset plus what differs from it, e.g. `tiny-lr_projector=0.01-language_model=gemma`."""
    changes = diff(get_preset(cfg.preset), cfg)
    parts = [f"{k.split('.')[-1]}={v[1]}" for k, v in changes.items() if k not in ("run_name", "output_dir", "experiment")]
    return "-".join([cfg.preset, *parts])[:120].replace("/", "_")


def _complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, warning about newer damaged ones it skips."""
    found, skipped = latest_complete_checkpoint(run_dir)
    for path, problem in skipped:
        log.warning("skipping damaged checkpoint %s (%s)%s", path, problem,
                    f"; resuming from {found.name}" if found is not None else "")
    return found


def find_resume_checkpoint(cfg: ExperimentConfig, resume: str) -> Path:
    """`resume` is a checkpoint/run directory, or 'latest' for the newest run of this config's name.

    A run's newest checkpoint that is damaged (a truncated file, a missing trainer state) is skipped,
    with a warning, for the newest complete one."""
    if resume != "latest":
        path = Path(resume)
        if (path / "checkpoints").is_dir():
            found = _complete_checkpoint(path)
        else:
            found = path
            problem = checkpoint_problem(path) if (path / "trainer_state.json").exists() else None
            if problem is not None:
                raise ConfigError(f"--resume {resume}: that checkpoint is damaged ({problem}); pass its run "
                                  f"directory to resume from the newest complete one")
        if found is None or not (found / "trainer_state.json").exists():
            raise ConfigError(f"--resume {resume}: no training checkpoint there (expected a run directory or a "
                              f"checkpoints/step-N folder)")
        return found
    base = cfg.run_name or default_run_name(cfg)
    # an explicit run name is the folder; a derived one has a start time (and maybe a -N suffix) appended
    pattern = re.compile(re.escape(base) + ("" if cfg.run_name else r"-\d{8}-\d{6}(-\d+)?") + "$")
    runs = [p for p in Path(cfg.output_dir).glob(f"{base}*") if pattern.match(p.name) and latest_checkpoint(p)]
    if not runs:
        raise ConfigError(f"--resume: no run named {base!r} with a checkpoint under {cfg.output_dir}/; pass the run "
                          f"directory explicitly (--resume runs/NAME)")
    run_dir = max(runs, key=lambda p: p.stat().st_mtime)
    found = _complete_checkpoint(run_dir)
    if found is None:
        raise ConfigError(f"--resume: every checkpoint of {run_dir} is damaged; start a new run (another --run_name)")
    return found


def lock_run_dir(run_dir: Path) -> HeldLock:
    """Hold `<run_dir>/.lock` (fcntl, exclusive) while the run trains: one process per run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return try_lock(run_dir / ".lock")
    except LockBusy as busy:
        pid = busy.pid if busy.pid is not None else "unknown"
        raise ConfigError(f"run folder {run_dir} is in use by another process (pid {pid})") from None


def _is_used(run_dir: Path) -> bool:
    return any(p.name != ".lock" for p in run_dir.iterdir())


def claim_new_run_dir(cfg: ExperimentConfig) -> tuple[Path, HeldLock]:
    """Create and lock the folder of a new run; never one another run has written to.

    An explicit --run_name whose folder already holds a run is a ConfigError (resume it or pick another
    name). A derived name (preset + changes + start time) gets a -2, -3, ... suffix when that folder
    exists already (two runs started in the same second): the folder is created atomically, so two
    processes never get the same one."""
    out = Path(cfg.output_dir)
    if cfg.run_name:
        run_dir = out / cfg.run_name
        held = lock_run_dir(run_dir)
        if _is_used(run_dir):
            held.release()
            raise ConfigError(f"run folder {run_dir} already holds a run named {cfg.run_name!r}: continue it with "
                              f"--resume, or choose another --run_name")
        return run_dir, held
    out.mkdir(parents=True, exist_ok=True)
    base = f"{default_run_name(cfg)}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        run_dir = out / (base if n == 1 else f"{base}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir, lock_run_dir(run_dir)
    raise ConfigError(f"could not create a new run folder {base} under {out}: 999 exist already")


def _tags(cfg: ExperimentConfig, model: Any, device: torch.device, dataset: Any) -> dict[str, str]:
    return {"preset": cfg.preset, "vision_encoder": model.arch.vision_source, "language_model": model.arch.language_source,
            "git_sha": git_sha(), "device": device_description(device), **library_versions(),
            "dataset": dataset.source, "dataset_fingerprint": dataset.fingerprint}


def _plot_losses(history: dict[str, list[list[float]]], path: Path) -> Path:
    fig, ax = plots.pyplot().subplots(figsize=(7, 4))
    for name, points in history.items():
        if points and name.endswith("loss"):  # benchmark scores are on their own charts in MLflow
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, marker="o" if name == metric_names.VAL_LOSS else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def run_experiment(cfg: ExperimentConfig, resume: str | None = None, parent_run_id: str | None = None,
                   tracking_uri: str | None = None, on_validation: Callable[[int, dict[str, float]], None] | None = None,
                   on_run_started: Callable[[str], None] | None = None) -> RunResult:
    """Train, evaluate and track one run. `on_run_started(run_id)` gets the MLflow run's id (the resumed
    run's on resume) once the run exists, before training: a caller can link a run that is killed later."""
    torch.manual_seed(cfg.train.seed)
    device = pick_device(cfg.train.device)
    dist = Dist.from_env(device.type)

    # Where the run lives: a new folder, or the one of the checkpoint we resume from. Rank 0 claims it
    # and holds its lock until the run ends; the other ranks learn the outcome (or the error) from it.
    resume_path = find_resume_checkpoint(cfg, resume) if resume else None
    run_id = None
    lock = None
    if dist.is_main:
        try:
            if resume_path is not None:
                run_dir = resume_path.parent.parent
                lock = lock_run_dir(run_dir)
                if resume == "latest" or Path(resume).resolve() == run_dir.resolve():
                    # Found before the lock was ours: the run that held it may have written (and pruned) since.
                    resume_path = latest_complete_checkpoint(run_dir)[0] or resume_path
            else:
                run_dir, lock = claim_new_run_dir(cfg)
            claimed: tuple[str, str, str] = ("ok", str(run_dir), str(resume_path or ""))
        except ConfigError as e:
            claimed = ("error", str(e), "")
    else:
        claimed = ("ok", "", "")
    claimed = dist.broadcast_object(claimed)
    if claimed[0] == "error":
        raise ConfigError(claimed[1])
    run_dir, resume_path = Path(claimed[1]), (Path(claimed[2]) if claimed[2] else None)
    try:
        if resume_path is not None:
            state = read_trainer_state(resume_path)
            stored = from_dict(ExperimentConfig, state.config)
            check_compatible(stored.model, cfg.model, str(resume_path))
            run_id = state.run_id
        return _run(cfg, run_dir, resume_path, run_id, device, dist, parent_run_id, tracking_uri, on_validation,
                    on_run_started)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: ExperimentConfig, run_dir: Path, resume_path: Path | None, run_id: str | None, device: torch.device,
         dist: Dist, parent_run_id: str | None, tracking_uri: str | None,
         on_validation: Callable[[int, dict[str, float]], None] | None,
         on_run_started: Callable[[str], None] | None) -> RunResult:
    run_name = run_dir.name

    # Tracking: rank 0 only. Runs of this host whose process died (SIGKILL) are marked KILLED first.
    if dist.is_main:
        mark_orphans_killed(cfg.experiment, tracking_uri=tracking_uri)
        tracker = MLflowTracker.start(cfg.experiment, run_name, run_id=run_id, parent_run_id=parent_run_id,
                                      tracking_uri=tracking_uri, tags={"preset": cfg.preset})
    else:
        tracker = NullTracker()
    with tracker:  # entered first: a failing callback still ends the run
        if on_run_started is not None and tracker.run_id is not None:  # rank 0's (a NullTracker has none)
            on_run_started(tracker.run_id)
        log.info("run %s (%s) in %s; MLflow run %s", run_name, "resumed" if resume_path else "new", run_dir, tracker.run_id)

        model = build_vlm(cfg.model)
        counts = model.parameter_counts()
        log.info("model: %s", {k: f"{v / 1e6:.2f}M" for k, v in counts.items()})

        splits = load_splits(cfg.data, cfg.train.seed, image_size=model.arch.transform.size)
        # On a GPU, uint8 images (a quarter of the bytes through the loader and to the device), normalised
        # there by the model; on the CPU, normalising in the data workers is cheaper (measured: the tiny run)
        processor = SampleProcessor.for_model(model, cfg.data.max_length, uint8_pixels=device.type == "cuda")
        if cfg.data.streaming:
            train_set = StreamingVQA(splits.train, processor, seed=cfg.train.seed)
        else:
            train_set = VQADataset(splits.train, processor)
        val_set = VQADataset(splits.val, processor)
        log.info("data: %s, %s train / %d validation samples", splits.source,
                 "streamed" if cfg.data.streaming else len(train_set), len(val_set))

        if resume_path is None:
            tracker.log_params(flatten(cfg))
        tracker.set_tags(_tags(cfg, model, device, splits))
        for context, part in (("training", splits.train), ("validation", splits.val)):  # the runs table's Dataset
            tracker.log_dataset(splits.source, splits.fingerprint, context, data=part, subset=cfg.data.subsets)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir / "config.json", cfg)

        # Benchmarks (--eval_tasks) run inside training, every eval_steps and at the last step.
        synthetic_records = list(splits.val) if splits.source == "synthetic" else None
        evaluate = build_evaluator(model, cfg, synthetic_records, dist,
                                   run=(run_dir, tracker.run_id, getattr(tracker, "tracking_uri", "")))
        state = train(model, train_set, val_set, cfg, run_dir, tracker, resume_from=resume_path, dist=dist,
                      on_validation=on_validation, evaluate=evaluate)
        if evaluate is not None:
            evaluate.finish()  # --eval_async: evaluations still running, or waiting for the end of training

        final: dict[str, float] = {}  # logged once, at the last step
        if dist.is_main:
            final.update({f"{metric_names.PARAMS_PREFIX}{k}": float(v) for k, v in counts.items()})
            tracker.log_metrics(final, state.step)
            final.update({name: points[-1][1] for name, points in state.history.items()},  # last value of each
                         **{metric_names.BEST_VAL_LOSS: state.best_val_loss})
            tracker.log_artifact(run_dir / "config.json")
            tracker.log_artifact(_plot_losses(state.history, run_dir / "loss_curve.png"))
            write_json(run_dir / "results.json", final)
            checkpoint, best = latest_checkpoint(run_dir), run_dir / "checkpoints" / "best"
            tracker.set_tags({"checkpoint": str(checkpoint.resolve()), "best_checkpoint": str(best.resolve())})
            if counts["total"] * 4 < ARTIFACT_LIMIT_BYTES:  # small models travel with the run; large ones by path
                tracker.log_artifact(checkpoint, "checkpoints/final")
                if best.exists():
                    tracker.log_artifact(best, "checkpoints/best")
    dist.shutdown()
    best_dir = run_dir / "checkpoints" / "best"
    return RunResult(tracker.run_id, run_dir, latest_checkpoint(run_dir), best_dir if best_dir.exists() else None, final)
