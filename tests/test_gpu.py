"""CUDA paths: bf16 autocast, fused AdamW, torch.compile and peak memory. Skipped (with a reason)
on machines without a GPU; run on one with `python -m pytest -q -m gpu tests/test_gpu.py`."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.presets import get_preset
from experiments.runner import run_experiment
from nanovlm import metrics as M
from nanovlm.config import override

pytestmark = pytest.mark.gpu


def test_tiny_run_on_cuda_with_bf16_fused_adamw_and_compile(tmp_path):
    cfg = override(get_preset("tiny"), {"max_steps": 20, "validation_steps": 10, "eval_interval": 10,
                                        "save_checkpoint_steps": 10, "train_samples": 400, "val_samples": 32,
                                        "compile": True, "device": "cuda", "output_dir": str(tmp_path)})
    result = run_experiment(cfg, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert math.isfinite(result.metrics[M.VAL_LOSS])
    assert result.metrics[M.TRAIN_LOSS] < 6.0


def test_real_size_step_fits_and_reports_memory(tmp_path):
    from nanovlm.model.vlm import build_vlm
    from nanovlm.optim import apply_freezing, build_optimizer

    cfg = override(get_preset("dinov3_gemma"), {"random_init": True, "batch_size": 1})
    model = build_vlm(cfg.model).cuda().train()
    apply_freezing(model, cfg.train)
    optimizer = build_optimizer(model, cfg.train, torch.device("cuda"))
    assert optimizer.defaults.get("fused") or any(g.get("fused") for g in optimizer.param_groups)
    tokens = model.arch.image_tokens
    ids = torch.tensor([[model.image_token_id] * tokens + [5, 6, 7, 8]], device="cuda")
    labels = torch.full_like(ids, -100)
    labels[0, -3:] = ids[0, -3:]
    images = torch.randn(1, 3, model.arch.transform.size, model.arch.transform.size, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, torch.ones_like(ids), images, labels)
    loss.backward()
    optimizer.step()
    peak_gb = torch.cuda.max_memory_allocated() / 2**30
    print(f"dinov3_gemma batch 1 step: loss {loss.item():.3f}, peak {peak_gb:.2f} GiB")
    assert math.isfinite(loss.item()) and peak_gb < 20
