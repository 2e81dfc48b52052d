"""Shared test setup: offline hub, one tiny-backbone cache per test session, small model builders."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Tests never reach the hub: a missing local file must fail fast, as it would offline.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("NANOVLM_CACHE", str(ROOT / ".pytest_cache" / "nanovlm"))
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")



def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@functools.lru_cache(maxsize=None)
def tiny_vlm(vision: str = "siglip", language: str = "smollm", **fields):
    """A tiny VLM (cached per combination: tests must not modify it in place)."""
    import torch

    from nanovlm.config import ModelConfig
    from nanovlm.model.vlm import build_vlm

    torch.manual_seed(0)
    model = build_vlm(ModelConfig(vision_encoder=vision, language_model=language, tiny=True, image_tokens=16, **fields))
    return model.eval()
