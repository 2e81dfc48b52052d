"""The training loop: one function, read top to bottom.

    state = train(model, train_set, val_set, cfg, tracker, run_dir, resume_from=None, dist=Dist())

AdamW over parameter groups (projector vs backbones), linear warmup + cosine, gradient
accumulation and clipping, bf16 autocast on CUDA (fp32 on CPU), optional torch.compile, DDP under
torchrun. Validation every `validation_steps`, the best model kept at `eval_interval`, a resumable
checkpoint every `save_checkpoint_steps`; the last step always validates and saves. Resuming
restores weights, optimizer, RNG and data position, so the losses continue exactly.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from nanovlm import metrics as M
from nanovlm.checkpoint import TrainerState, load_training_checkpoint, save_best, save_training_checkpoint
from nanovlm.config import ExperimentConfig, to_dict
from nanovlm.data.collate import Collator, ResumableSampler
from nanovlm.distributed import Dist
from nanovlm.optim import apply_freezing, build_optimizer, set_lr, set_train_mode
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


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "images", "labels")
    return {k: batch[k].to(device, non_blocking=True) for k in keys}


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, device: torch.device, autocast: Any, dist: Dist) -> float:
    """Validation loss, weighted by answer tokens, summed over all ranks' shards."""
    totals = torch.zeros(2, device=device, dtype=torch.float64)  # (loss * tokens, tokens)
    for batch in loader:
        if not batch["size"]:
            continue
        inputs = _to(batch, device)
        tokens = (inputs["labels"][:, 1:] != -100).sum()
        with autocast:
            loss = model(**inputs)
        totals += torch.stack([loss.double() * tokens, tokens.double()])
    dist.all_reduce_sum(totals)
    return (totals[0] / totals[1].clamp(min=1)).item()


def train(model: Any, train_set: Any, val_set: Any, cfg: ExperimentConfig, tracker: Tracker | None = None,
          run_dir: str | Path = "runs/debug", resume_from: str | Path | None = None, dist: Dist = Dist(),
          on_validation: Callable[[int, float], None] | None = None) -> TrainerState:
    """Train until cfg.train.max_steps; `on_validation(step, val_loss)` may stop the run by raising
    (a sweep's pruner does)."""
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
    optimizer = build_optimizer(model, tc, device)
    state = TrainerState(run_id=tracker.run_id, config=to_dict(cfg))
    if resume_from is not None:
        state = load_training_checkpoint(resume_from, model, optimizer)
        state.run_id = tracker.run_id or state.run_id
    step_model = model
    if dist.enabled:
        step_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        step_model = torch.compile(step_model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    # Data: the sampler starts where the checkpoint stopped; each rank reads its own shard.
    pad_id = model.tokenizer.pad_token_id
    loader_kw = dict(collate_fn=Collator(pad_id), num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    if isinstance(train_set, torch.utils.data.IterableDataset):  # streamed: resumes by position itself
        stream = train_set.resume(state.samples_seen, dist.rank, dist.world_size)
        batches = iter(DataLoader(stream, batch_size=tc.batch_size, **{**loader_kw, "num_workers": 0}))
    else:
        sampler = ResumableSampler(len(train_set), tc.seed, state.samples_seen, dist.rank, dist.world_size)
        batches = iter(DataLoader(train_set, batch_size=tc.batch_size, sampler=sampler, **loader_kw))
    val_shard = torch.utils.data.Subset(val_set, range(dist.rank, len(val_set), dist.world_size))
    val_loader = DataLoader(val_shard, batch_size=tc.batch_size, **loader_kw)
    samples_per_step = tc.batch_size * tc.gradient_accumulation_steps

    progress = tqdm(total=tc.max_steps, initial=state.step, disable=not dist.is_main, desc="train", dynamic_ncols=True)
    while state.step < tc.max_steps:
        t0 = time.perf_counter()
        lrs = set_lr(optimizer, state.step, tc)
        set_train_mode(model, tc, True)
        loss_sum = torch.zeros((), device=device)
        n_samples = n_tokens = 0
        for micro in range(tc.gradient_accumulation_steps):
            batch = next(batches)
            state.samples_seen += tc.batch_size
            state.skipped += batch["skipped"]
            if not batch["size"]:
                continue
            inputs = _to(batch, device)
            # DDP all-reduces gradients on the last micro-step only
            sync = micro == tc.gradient_accumulation_steps - 1 or not dist.enabled
            with (contextlib.nullcontext() if sync else step_model.no_sync()), autocast:
                loss = step_model(**inputs) / tc.gradient_accumulation_steps
            loss.backward()
            loss_sum += loss.detach()
            n_samples += batch["size"]
            n_tokens += int(inputs["attention_mask"].sum())
        if state.skipped > cfg.data.max_skip_fraction * state.samples_seen:
            raise TooManySkipped(f"{state.skipped} of {state.samples_seen} samples were unreadable or longer than "
                                 f"max_length={cfg.data.max_length} (limit: max_skip_fraction={cfg.data.max_skip_fraction})")
        train_loss = dist.all_reduce_sum(loss_sum) / dist.world_size
        if not torch.isfinite(train_loss):
            raise NonFiniteLoss(f"the training loss became {train_loss.item()} at step {state.step + 1}; weights were "
                                f"not updated. The last good checkpoint is in {run_dir / 'checkpoints'}. Lower the "
                                f"learning rates or raise warmup_ratio, then --resume.")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        last_step = state.step == tc.max_steps

        elapsed = time.perf_counter() - t0
        train_loss = train_loss.item()
        step_metrics = {M.TRAIN_LOSS: train_loss, M.GRAD_NORM: grad_norm.item(),
                        M.SAMPLES_PER_S: n_samples * dist.world_size / elapsed,
                        M.TOKENS_PER_S: n_tokens * dist.world_size / elapsed,
                        M.PEAK_MEMORY_MB: peak_memory_mb(device), M.DATA_SKIPPED: state.skipped,
                        **{M.lr_name(group): lr for group, lr in lrs.items()}}
        state.record(M.TRAIN_LOSS, state.step, train_loss)

        # Validation, best model, checkpoint: on their intervals and always on the last step.
        if last_step or state.step % tc.validation_steps == 0 or state.step % tc.eval_interval == 0:
            set_train_mode(model, tc, False)
            val_loss = validate(step_model, val_loader, device, autocast, dist)
            step_metrics[M.VAL_LOSS] = val_loss
            state.record(M.VAL_LOSS, state.step, val_loss)
            if (last_step or state.step % tc.eval_interval == 0) and val_loss < state.best_val_loss:
                state.best_val_loss = val_loss
                step_metrics[M.BEST_VAL_LOSS] = val_loss
                if dist.is_main:
                    save_best(run_dir, model, state.meta(val_loss=val_loss))
        if dist.is_main:
            tracker.log_metrics(step_metrics, state.step)
        if M.VAL_LOSS in step_metrics and on_validation is not None:
            on_validation(state.step, step_metrics[M.VAL_LOSS])
        if last_step or state.step % tc.save_checkpoint_steps == 0:
            if dist.is_main:
                # metrics first: whatever a checkpoint covers is already in MLflow if we are killed after it
                tracker.flush()
                save_training_checkpoint(run_dir, model, optimizer, state, keep=tc.keep_checkpoints)
            dist.barrier()
        progress.update(1)
        progress.set_postfix(loss=f"{train_loss:.4f}", lr=f"{lrs.get('projector', 0):.2e}",
                             samples_s=f"{step_metrics[M.SAMPLES_PER_S]:.1f}")
    progress.close()
    if math.isinf(state.best_val_loss):
        state.best_val_loss = float("nan")
    return state
