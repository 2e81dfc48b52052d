"""Parameter groups, freezing and the learning-rate schedule.

    rates = group_rates(train_cfg)          # {"projector": 5e-3, "vision": 5e-5, "language": 5e-5}
    apply_freezing(model, train_cfg)        # rate 0 -> requires_grad off, eval mode
    optimizer = build_optimizer(model, train_cfg)
    lr = lr_factor(step, train_cfg) * group_rate

The projector starts from scratch, so it learns at a much higher rate than the pretrained
backbones (nanoVLM's 0.00512 vs 5e-5). A part whose rate is 0 is frozen: it is left out of the
optimizer, needs no gradients and runs in eval mode (no dropout, no statistics updates).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanovlm.config import TrainConfig

_MODULE = {"projector": "projector", "vision": "vision", "language": "lm"}


def group_rates(cfg: TrainConfig) -> dict[str, float]:
    vision = cfg.lr_backbones if cfg.lr_vision < 0 else cfg.lr_vision
    language = cfg.lr_backbones if cfg.lr_language < 0 else cfg.lr_language
    return {"projector": cfg.lr_projector, "vision": 0.0 if cfg.freeze_vision_encoder else vision, "language": language}


def frozen_parts(cfg: TrainConfig) -> list[str]:
    return [part for part, rate in group_rates(cfg).items() if rate == 0]


def apply_freezing(model: nn.Module, cfg: TrainConfig) -> None:
    for part, rate in group_rates(cfg).items():
        module = getattr(model, _MODULE[part])
        module.requires_grad_(rate > 0)
        module.train(rate > 0 and model.training)


def set_train_mode(model: nn.Module, cfg: TrainConfig, training: bool) -> None:
    """model.train()/eval() that keeps frozen parts in eval mode."""
    model.train(training)
    for part in frozen_parts(cfg):
        getattr(model, _MODULE[part]).eval()


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = []
    for part, rate in group_rates(cfg).items():
        params = [p for p in getattr(model, _MODULE[part]).parameters() if p.requires_grad]
        if rate > 0 and params:
            groups.append({"params": params, "lr": rate, "initial_lr": rate, "name": part})
    if not groups:
        raise ValueError("every part is frozen (all learning rates are 0): nothing to train")
    # Fused AdamW (CUDA and CPU): one kernel for all parameters, and it can skip a step on the device
    # (`found_inf`), which is how nanovlm.step avoids reading the loss back every step.
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=True)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine to 0 at max_steps. `step` counts optimizer steps done."""
    warmup = max(1, round(cfg.warmup_ratio * cfg.max_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.max_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> dict[str, float]:
    factor = lr_factor(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return {group["name"]: group["lr"] for group in optimizer.param_groups}
