"""Experiment presets: name -> function returning an ExperimentConfig. Register a preset here only.

    cfg = get_preset("original_small")
    python -m experiments.run --list        # prints them

Derived presets call their base and change fields, so a preset says only what makes it different.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from nanovlm.config import ConfigError, DataConfig, ExperimentConfig, ModelConfig, TrainConfig, override


def default() -> ExperimentConfig:
    """~450M: SigLIP2-B/16-512 + SmolLM2-360M-Instruct, 32x32 patches, shuffle 4 -> 64 image tokens."""
    return ExperimentConfig(preset="default", model=ModelConfig(vision_encoder="siglip", language_model="smollm",
                                                                image_tokens=64))


def original_small() -> ExperimentConfig:
    """~222M: SigLIP-B/16-224 + SmolLM2-135M, 14x14 patches, shuffle 2 -> 49 image tokens."""
    return override(replace(default(), preset="original_small"),
                    {"vision_encoder": "siglip-224", "language_model": "smollm-135m", "image_tokens": 49})


def dinov3_gemma() -> ExperimentConfig:
    """DINOv3-S/16+ + Gemma-3-270M-it at 224 px: 14x14 patches -> 49 image tokens; CLS + 4 registers dropped."""
    return override(replace(default(), preset="dinov3_gemma"),
                    {"vision_encoder": "dinov3", "dinov3_size": "vits16plus", "language_model": "gemma",
                     "image_tokens": 49})


def dinov3b_smollm() -> ExperimentConfig:
    """DINOv3-B/16 + SmolLM2-360M-Instruct at 224 px, 49 image tokens (a row of the size table)."""
    return override(replace(dinov3_gemma(), preset="dinov3b_smollm"), {"dinov3_size": "vitb16", "language_model": "smollm"})


def dinov3l_gemma() -> ExperimentConfig:
    """DINOv3-L/16 + Gemma-3-270M-it at 224 px, 49 image tokens (a row of the size table)."""
    return override(replace(dinov3_gemma(), preset="dinov3l_gemma"), {"dinov3_size": "vitl16"})


def tiny() -> ExperimentConfig:
    """Offline stand-in: tiny random backbones built locally, synthetic shapes VQA, minutes on 2 CPU cores."""
    return ExperimentConfig(
        preset="tiny",
        model=ModelConfig(tiny=True, image_tokens=16),
        # Rows of 336 tokens hold four ~83-token samples: 4 rows = 16 samples per step.
        data=DataConfig(dataset="synthetic", train_samples=4000, val_samples=200, max_length=336),
        # Random tiny backbones learn from scratch, so every part gets a high rate.
        train=TrainConfig(batch_size=4, gradient_accumulation_steps=1, max_steps=600, lr_projector=0.01,
                          lr_backbones=0.003, warmup_ratio=0.05, validation_steps=100, best_checkpoint_steps=100,
                          save_checkpoint_steps=200, eval_tasks="synthetic"),
    )


PRESETS: dict[str, Callable[[], ExperimentConfig]] = {
    "default": default,
    "original_small": original_small,
    "dinov3_gemma": dinov3_gemma,
    "dinov3b_smollm": dinov3b_smollm,
    "dinov3l_gemma": dinov3l_gemma,
    "tiny": tiny,
}


def get_preset(name: str) -> ExperimentConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}. Valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def describe() -> str:
    return "\n".join(f"  {name:<16} {fn.__doc__}" for name, fn in PRESETS.items())
