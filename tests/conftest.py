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



@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model runs fastest on one thread; on a shared, busy CPU, 2 threads can be 50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """An empty MLflow sqlite store, made once per session (its migrations take seconds); tests copy it."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory) -> Path:
    """The offline benchmark sets (python -m evals.fixtures), written once per session."""
    from evals import fixtures

    out = tmp_path_factory.mktemp("evalfix")
    fixtures.write_all(out)
    return out


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


def model_batch(model, samples, rows: int = 0, width: int = 0, packing: bool = True):
    """Samples ({input_ids, labels, pixel_values}) -> the model's keyword inputs, as training collates them.

    Packed first-fit into `rows` rows of `width` tokens (default: one row per sample, or as few as
    needed when packing, of the longest sample's length).
    """
    from nanovlm.data.packing import collate_rows, model_inputs, pack

    import torch

    width = width or max(len(s["input_ids"]) for s in samples)
    rows = rows or len(samples)
    (grouped, consumed, _), = list(pack(samples, rows, width, packing))
    assert consumed == len(samples), "the samples do not fit the rows"
    batch = collate_rows(grouped, width, model.tokenizer.pad_token_id, model.image_token_id, model.arch.image_tokens)
    return model_inputs(batch, torch.device("cpu"))


def wait_for_url(url: str, proc, log, timeout: float) -> None:
    """Poll `url` until it answers; fail with the server's log if `proc` exits or `timeout` s pass."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"server at {url} did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(0.3)
