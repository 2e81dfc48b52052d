"""The training loop: one function, read top to bottom.

    state = train(model, train_set, val_set, cfg, run_dir, tracker, resume_from=None, dist=Dist())

Samples are packed first-fit into rows of `max_length` tokens (`--packing`, attention stays inside
each sample) with static shapes; `nanovlm.step.train_step` does forward/backward over the
micro-batches, clipping and fused AdamW without reading anything back from the device. The loop
reads the step's numbers once per `log_interval` (and before validating or saving), so on a GPU
the host runs ahead and the device never waits for Python. bf16 autocast on CUDA (fp32 on CPU),
each transformer block compiled on CUDA, DDP under torchrun.

Validation every `validation_steps`, the best model kept at `best_checkpoint_steps`, a resumable
checkpoint every `save_checkpoint_steps`; the last step always validates and saves. Resuming
restores weights, optimizer, RNG and every rank's data position, so the losses continue exactly.
"""

from __future__ import annotations

import math
import os
import resource
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from nanovlm import metrics as metric_names
from nanovlm.checks import too_many_skipped
from nanovlm.checkpoint import TrainerState, load_training_checkpoint, save_best, save_training_checkpoint
from nanovlm.config import ConfigError, ExperimentConfig, to_dict
from nanovlm.data.collate import ResumableSampler
from nanovlm.data.packing import bucket, collate_rows, model_inputs, pack
from nanovlm.data.prefetch import prefetch
from nanovlm.distributed import Dist
from nanovlm.flops import FlopsCounter, peak_tflops
from nanovlm.optim import apply_freezing, build_optimizer, set_lr, set_train_mode
from nanovlm.step import autocast_for, cuda_graphs_for, prepare, train_step
from nanovlm.tracking import NullTracker, Tracker


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the weights were not updated with it."""


class TooManySkipped(RuntimeError):
    """More samples than allowed were unreadable or too long."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by tensors. CPU: peak resident set size of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------- data


def _as_list(samples: list[Any]) -> list[Any]:
    return samples


def _bundle(samples: list[dict[str, torch.Tensor] | None]) -> dict[str, Any]:
    """A worker's chunk of samples as one tensor per field (in place of three per sample): the main process
    receives each tensor a worker returns through a socket round trip (with 2 workers on 2 CPU cores,
    3.2 s of the main process's 8.6 s per 2,267 samples before, 0.5 s after)."""
    kept = [s for s in samples if s is not None]
    fields = list(kept[0]) if kept else []
    return {"kept": [s is not None for s in samples],
            "sizes": {k: [len(s[k]) for s in kept] for k in fields},
            "data": {k: torch.cat([s[k] for s in kept]) for k in fields}}


def _unbundle(chunk: dict[str, Any]) -> Iterator[dict[str, torch.Tensor] | None]:
    """The samples (and Nones for unreadable ones) of a `_bundle`, as views of its tensors."""
    parts = {k: v.split(chunk["sizes"][k]) for k, v in chunk["data"].items()}
    i = 0
    for present in chunk["kept"]:
        if not present:
            yield None
            continue
        yield {k: v[i] for k, v in parts.items()}
        i += 1


def sample_stream(dataset: Any, sampler: Any, workers: int) -> Iterator[Any]:
    """Processed samples in `sampler` order; decoding and tokenising happen in `workers` processes."""
    loader = DataLoader(dataset, batch_size=16, sampler=sampler, collate_fn=_bundle if workers else _as_list,
                        num_workers=workers, prefetch_factor=4 if workers else None, persistent_workers=False)
    for chunk in loader:
        yield from (_unbundle(chunk) if workers else chunk)


def batches(samples: Iterator[Any], model: Any, cfg: ExperimentConfig, device: torch.device) -> Iterator[dict[str, Any]]:
    """Collated batches of `batch_size` rows, each with its `consumed` and `skipped` sample counts."""
    row_length = cfg.data.max_length
    for rows, consumed, skipped in pack(samples, cfg.train.batch_size, row_length, cfg.train.packing):
        # packed rows are always full length; single samples are padded to a bucket (a few shapes)
        width = row_length
        if not cfg.train.packing:
            width = min(row_length, bucket(max((s["input_ids"].shape[0] for row in rows for s in row), default=1)))
        cuda = device.type == "cuda"  # pinned host memory: the copy to the GPU runs asynchronously
        batch = collate_rows(rows, width, model.tokenizer.pad_token_id, model.image_token_id, model.arch.image_tokens,
                             pin_memory=cuda)
        if cuda:  # the other inputs are small: pinned by a copy (pin_memory returns the pinned images as they are)
            batch.update({k: v.pin_memory() for k, v in batch.items() if torch.is_tensor(v)})
        yield {**batch, "consumed": consumed, "skipped": skipped}


def _workers(cfg: ExperimentConfig, device: torch.device) -> int:
    if cfg.data.streaming:
        return 0  # each worker would replay the whole stream
    if cfg.data.num_workers >= 0:
        return cfg.data.num_workers
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


@torch.no_grad()
def validate(step_model: torch.nn.Module, val_batches: Iterator[dict[str, Any]], device: torch.device, autocast: Any,
             dist: Dist) -> float:
    """Validation loss, weighted by answer tokens, summed over all ranks' shards."""
    weighted, tokens = torch.zeros((), device=device, dtype=torch.float64), 0  # sum of loss x tokens; tokens
    for batch in val_batches:
        with autocast:
            loss = step_model(**model_inputs(batch, device))
        weighted += loss.double() * batch["stats"]["loss_tokens"]
        tokens += batch["stats"]["loss_tokens"]
    totals = dist.all_reduce_sum(torch.stack([weighted, torch.tensor(float(tokens), device=device, dtype=torch.float64)]))
    return (totals[0] / totals[1].clamp(min=1)).item()


def _improves(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if metric_names.higher_is_better(metric) else value < best


# ----------------------------------------------------------------------------- the loop


def train(model: Any, train_set: Any, val_set: Any, cfg: ExperimentConfig, run_dir: str | Path,
          tracker: Tracker | None = None, resume_from: str | Path | None = None, dist: Dist = Dist(),
          on_validation: Callable[[int, dict[str, float]], None] | None = None,
          evaluate: Callable[[int], dict[str, float]] | None = None) -> TrainerState:
    """Train until cfg.train.max_steps, writing checkpoints under `run_dir`. `evaluate(step)` -> {eval/<task>/<score>: value} runs the
    benchmarks every `eval_steps` and at the last step, on every rank (the runner builds it from
    `evals`). `on_validation(step, metrics)` gets the step's metrics after each validation or
    evaluation and may stop the run by raising (a sweep's pruner does)."""
    tc = cfg.train
    tracker = tracker or NullTracker()
    run_dir = Path(run_dir)
    device = pick_device(tc.device)
    if device.type == "cuda":
        torch.cuda.set_device(dist.local_rank)
        device = torch.device("cuda", dist.local_rank)

    # Model and optimizer. Frozen parts (rate 0) get no gradients and stay in eval mode.
    model.to(device)
    apply_freezing(model, tc)
    optimizer = build_optimizer(model, tc)
    state = TrainerState(run_id=tracker.run_id, config=to_dict(cfg))
    if resume_from is not None:
        state = load_training_checkpoint(resume_from, model, optimizer)
        state.run_id = tracker.run_id or state.run_id
        if state.positions and len(state.positions) != dist.world_size:
            raise ConfigError(f"{resume_from} was written by {len(state.positions)} processes; resume it with as many "
                              f"(torchrun --nproc_per_node {len(state.positions)}) to continue the same data order")
        state.samples_seen = state.positions[dist.rank] if state.positions else state.samples_seen
    inference_attention = model.lm.config._attn_implementation  # restored for evaluation after training
    step_model = prepare(model, tc, device, dist)  # attention kernel, fused kernels, compiled blocks, DDP
    graphs = cuda_graphs_for(step_model, tc, device)  # None: forward/backward run eagerly
    autocast = autocast_for(device)

    # Data: each rank reads its own shard, from where the checkpoint stopped.
    workers = _workers(cfg, device)
    if isinstance(train_set, torch.utils.data.IterableDataset):  # streamed: resumes by position itself
        train_samples = iter(train_set.resume(state.samples_seen, dist.rank, dist.world_size))
    else:
        sampler = ResumableSampler(len(train_set), tc.seed, state.samples_seen, dist.rank, dist.world_size)
        train_samples = sample_stream(train_set, sampler, workers)
    # packed, collated and pinned in a thread, a step ahead, while the device runs the current one
    train_batches = prefetch(batches(train_samples, model, cfg, device), tc.gradient_accumulation_steps, device)
    val_indices = range(dist.rank, len(val_set), dist.world_size)
    val_batches = lambda: batches(sample_stream(val_set, val_indices, min(workers, 2)), model, cfg, device)  # noqa: E731

    # MFU on GPUs of known peak: model FLOPs (nanovlm.flops.FLOPS_FORMULA) of this rank's batches / time / peak
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    flops_of = FlopsCounter(model, tc) if peak else None

    progress = tqdm(total=tc.max_steps, initial=state.step, disable=not dist.is_main, desc="train", dynamic_ncols=True)
    unread: list[tuple[int, torch.Tensor, dict[str, float]]] = []  # (step, device numbers, host numbers)
    window = {"samples": 0, "tokens": 0, "slots": 0, "images": 0, "image_slots": 0, "flops": 0,
              "start": time.perf_counter()}
    while state.step < tc.max_steps:
        lrs = set_lr(optimizer, state.step, tc)
        set_train_mode(model, tc, True)

        # Data for the whole step first; the time spent waiting for it shows a starved device.
        t0 = time.perf_counter()
        micro_batches = []
        while len(micro_batches) < tc.gradient_accumulation_steps:
            batch = next(train_batches)
            state.samples_seen += batch["consumed"]
            state.skipped += batch["skipped"]
            if too_many_skipped(state.skipped, state.samples_seen, cfg.data.max_skip_fraction):
                raise TooManySkipped(f"{state.skipped} of {state.samples_seen} samples were unreadable or longer than "
                                     f"max_length={cfg.data.max_length} (limit: max_skip_fraction="
                                     f"{cfg.data.max_skip_fraction})")
            if batch["stats"]["samples"]:  # a batch of skipped samples only trains nothing
                micro_batches.append(batch)
                for key in ("samples", "tokens", "slots", "images", "image_slots"):
                    window[key] += batch["stats"][key]
                if flops_of:
                    window["flops"] += flops_of(batch["stats"]).total
        data_wait = time.perf_counter() - t0

        numbers = train_step(step_model, model, optimizer, [model_inputs(b, device) for b in micro_batches],
                             autocast, tc.max_grad_norm, dist, graphs)  # (loss, grad_norm, skipped), on the device
        state.step += 1
        unread.append((state.step, numbers, {metric_names.DATA_WAIT_S: data_wait, **{metric_names.lr_name(g): lr for g, lr in lrs.items()}}))
        progress.update(1)
        last_step = state.step == tc.max_steps
        validate_now = last_step or state.step % tc.validation_steps == 0 or state.step % tc.best_checkpoint_steps == 0
        save_now = last_step or state.step % tc.save_checkpoint_steps == 0
        evaluate_now = evaluate is not None and (last_step or (tc.eval_steps and state.step % tc.eval_steps == 0))
        if not (validate_now or evaluate_now or save_now or state.step % tc.log_interval == 0):
            continue

        # Read the steps since the last read: one host sync for all of them.
        values = torch.stack([n for _, n, _ in unread]).tolist()
        bad = [step for (step, _, _), (_, _, skipped) in zip(unread, values) if skipped]
        if bad:
            raise NonFiniteLoss(f"the training loss or gradients became NaN/inf at step(s) {bad}; those updates were "
                                f"skipped, so the weights hold no NaN/inf. The last good checkpoint is in "
                                f"{run_dir / 'checkpoints'}. Lower the learning rates or raise warmup_ratio, then --resume.")
        elapsed = time.perf_counter() - window["start"]
        for (step, _, host), (loss, grad_norm, _) in zip(unread, values):
            state.record(metric_names.TRAIN_LOSS, step, loss)
            if dist.is_main:
                tracker.log_metrics({metric_names.TRAIN_LOSS: loss, metric_names.GRAD_NORM: grad_norm, **host}, step)
        step_metrics = {metric_names.SAMPLES_PER_S: window["samples"] * dist.world_size / elapsed,
                        metric_names.TOKENS_PER_S: window["tokens"] * dist.world_size / elapsed,
                        metric_names.PADDING_FRACTION: 1 - window["tokens"] / max(1, window["slots"]),
                        metric_names.BLANK_IMAGE_FRACTION: 1 - window["images"] / max(1, window["image_slots"]),
                        metric_names.PEAK_MEMORY_MB: peak_memory_mb(device), metric_names.DATA_SKIPPED: state.skipped}
        if peak:
            step_metrics[metric_names.MFU] = window["flops"] / elapsed / (peak * 1e12)
        loss = values[-1][0]
        unread = []
        window.update({key: 0 for key in window} | {"start": time.perf_counter()})

        # Validation, benchmarks, best model, checkpoint: on their intervals and always on the last step.
        keep_best_now = last_step or state.step % tc.best_checkpoint_steps == 0
        if validate_now:
            set_train_mode(model, tc, False)
            val_loss = validate(step_model, val_batches(), device, autocast, dist)
            step_metrics[metric_names.VAL_LOSS] = val_loss
            if keep_best_now and val_loss < state.best_val_loss:
                state.best_val_loss = step_metrics[metric_names.BEST_VAL_LOSS] = val_loss
        if evaluate_now:
            set_train_mode(model, tc, False)
            step_metrics.update(evaluate(state.step))
        for name in (metric_names.VAL_LOSS, *(k for k in step_metrics if k.startswith("eval/"))):
            if name in step_metrics:
                state.record(name, state.step, step_metrics[name])
        score = step_metrics.get(tc.best_metric)  # a benchmark score is worth keeping whenever it is measured
        if (keep_best_now or tc.best_metric.startswith("eval/")) and score is not None and _improves(tc.best_metric, score, state.best_score):
            state.best_score = score
            if dist.is_main:
                save_best(run_dir, model, state.meta(**{"best_metric": tc.best_metric, tc.best_metric: score}))
        if dist.is_main:
            tracker.log_metrics(step_metrics, state.step)
        if (validate_now or evaluate_now) and on_validation is not None:
            on_validation(state.step, step_metrics)
        if save_now:
            state.positions = dist.all_gather_object(state.samples_seen)
            if dist.is_main:
                # metrics first: whatever a checkpoint covers is already in MLflow if we are killed after it
                tracker.flush()
                save_training_checkpoint(run_dir, model, optimizer, state, keep=tc.keep_checkpoints)
            dist.barrier()
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lrs.get('projector', 0):.2e}",
                             samples_s=f"{step_metrics[metric_names.SAMPLES_PER_S]:.1f}",
                             **({"mfu": f"{step_metrics[metric_names.MFU]:.1%}"} if peak else {}))
    progress.close()
    model.lm.set_attn_implementation(inference_attention)
    if math.isinf(state.best_val_loss):
        state.best_val_loss = float("nan")
    return state
