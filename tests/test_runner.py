"""The experiment runner end to end on the tiny preset: MLflow records, checkpoints, exact resume
after SIGKILL, NaN handling, bad input, DDP under torchrun, and the MLflow server's REST API."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from experiments.presets import get_preset
from experiments.runner import run_experiment
from nanovlm import metrics as metric_names
from nanovlm.checkpoint import latest_checkpoint, read_trainer_state
from nanovlm.config import ConfigError, ExperimentConfig, ModelConfig, from_dict, override, read_config
from nanovlm.model.vlm import IncompatibleCheckpoint, VisionLanguageModel

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"max_steps": 6, "validation_steps": 3, "eval_interval": 3, "save_checkpoint_steps": 2, "batch_size": 4,
         "train_samples": 64, "val_samples": 8}


def _cfg(tmp_path, **changes):
    return override(get_preset("tiny"), {**SHORT, "output_dir": str(tmp_path / "runs"), **changes})


def _uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def _client(tmp_path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=_uri(tmp_path))


def _env(tmp_path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": _uri(tmp_path), "PYTHONPATH": str(ROOT),
            "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}


def test_tiny_run_is_tracked_and_checkpointed(tmp_path):
    result = run_experiment(_cfg(tmp_path, run_name="t1"), tracking_uri=_uri(tmp_path))
    run = _client(tmp_path).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "t1"
    assert run.data.params["train.lr_projector"] == "0.01" and run.data.params["model.tiny"] == "True"
    for tag in ("preset", "git_sha", "device", "torch", "transformers", "dataset_fingerprint", "vision_encoder"):
        assert run.data.tags.get(tag), tag
    history = _client(tmp_path).get_metric_history(result.run_id, metric_names.TRAIN_LOSS)
    assert [m.step for m in history] == list(range(1, 7))
    assert [m.step for m in _client(tmp_path).get_metric_history(result.run_id, metric_names.VAL_LOSS)] == [3, 6]
    for name in (metric_names.SAMPLES_PER_S, metric_names.TOKENS_PER_S, metric_names.PEAK_MEMORY_MB, metric_names.GRAD_NORM, metric_names.lr_name("projector"),
                 metric_names.eval_name("synthetic", "colour"), metric_names.eval_name("synthetic_blind", "colour"), "params/total"):
        assert name in run.data.metrics, name
    artifacts = {a.path for a in _client(tmp_path).list_artifacts(result.run_id)}
    assert {"config.json", "loss_curve.png", "checkpoints"} <= artifacts
    # every saved copy of the config reads back as the config that ran (one shape: config.to_dict)
    cfg = _cfg(tmp_path, run_name="t1")
    assert read_config(result.run_dir / "config.json") == cfg
    assert from_dict(ExperimentConfig, read_trainer_state(result.checkpoint).config) == cfg
    assert from_dict(ModelConfig, json.loads((result.checkpoint / "config.json").read_text())["model"]) == cfg.model
    # checkpoints: the last K step folders plus the best, each loadable, with the run id inside
    steps = sorted(p.name for p in (result.run_dir / "checkpoints").glob("step-*"))
    assert steps == ["step-000004", "step-000006"]
    assert result.best_checkpoint is not None
    meta = json.loads((result.checkpoint / "meta.json").read_text())
    assert meta["run_id"] == result.run_id
    VisionLanguageModel.from_pretrained(result.checkpoint)


def _losses(run_dir: Path) -> list[float]:
    return [v for _, v in read_trainer_state(latest_checkpoint(run_dir)).history[metric_names.TRAIN_LOSS]]


@pytest.mark.slow
def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(tmp_path):
    args = ["tiny", "--max_steps", "40", "--save_checkpoint_steps", "4", "--validation_steps", "20",
            "--batch_size", "4", "--train_samples", "200", "--val_samples", "8", "--output_dir", str(tmp_path / "runs")]
    # Bitwise equality across processes needs run-to-run reproducible BLAS: by default MKL may pick
    # its thread count and code path per call (CNR off, MKL_DYNAMIC on); 1 CI run in about 6 saw a
    # 2-ulp difference at step 3 between two fresh runs.
    env = {**_env(tmp_path), "MKL_DYNAMIC": "FALSE", "MKL_CBWR": "AUTO,STRICT"}
    run = lambda *extra, **kw: subprocess.Popen([sys.executable, "-m", "experiments.run", *args, *extra],  # noqa: E731
                                                env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    reference = run("--run_name", "straight")
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()[-2000:]

    victim = run("--run_name", "killed")
    ckpt_dir = tmp_path / "runs" / "killed" / "checkpoints"
    deadline = time.time() + 240
    while not (ckpt_dir / "step-000008").exists():
        assert victim.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = read_trainer_state(latest_checkpoint(tmp_path / "runs" / "killed")).step
    assert killed_at < 40

    resumed = run("--run_name", "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    straight, again = _losses(tmp_path / "runs" / "straight"), _losses(tmp_path / "runs" / "killed")
    assert len(straight) == len(again) == 40
    assert again == straight  # bitwise: same weights, optimizer, RNG and data position

    # one MLflow run, continued; the killed process's run was not left RUNNING
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("nanovlm").experiment_id],
                              filter_string="attributes.run_name = 'killed'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, metric_names.TRAIN_LOSS)}
    assert [logged[s] for s in range(1, 41)] == pytest.approx(straight, rel=1e-6)


def test_resume_with_another_architecture_lists_the_fields(tmp_path):
    result = run_experiment(_cfg(tmp_path, run_name="arch"), tracking_uri=_uri(tmp_path))
    other = _cfg(tmp_path, run_name="arch", language_model="gemma")
    with pytest.raises(IncompatibleCheckpoint, match="language_model: checkpoint 'smollm' vs requested 'gemma'"):
        run_experiment(other, resume="latest", tracking_uri=_uri(tmp_path))
    with pytest.raises(ConfigError, match="no training checkpoint"):
        run_experiment(_cfg(tmp_path), resume=str(tmp_path), tracking_uri=_uri(tmp_path))
    assert result.checkpoint.exists()


def test_the_run_id_is_handed_out_when_the_run_starts_also_on_resume(tmp_path):
    seen: list[str] = []

    def on_validation(step, metrics):  # sweeps link a trial's run before it trains (it may be killed)
        assert seen, "on_run_started was not called before the first validation"

    cfg = _cfg(tmp_path, run_name="ids", max_steps=2, validation_steps=2)
    first = run_experiment(cfg, tracking_uri=_uri(tmp_path), on_run_started=seen.append, on_validation=on_validation)
    resumed = run_experiment(override(cfg, {"max_steps": 4}), resume="latest", tracking_uri=_uri(tmp_path),
                             on_run_started=seen.append)
    assert seen == [first.run_id, first.run_id] and resumed.run_id == first.run_id


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from nanovlm.model.vlm import VisionLanguageModel as VLM
    from nanovlm.train import NonFiniteLoss

    calls = {"n": 0}
    forward = VLM.forward

    def poisoned(self, *args, **kwargs):
        loss = forward(self, *args, **kwargs)
        calls["n"] += 1
        return loss * float("nan") if self.training and calls["n"] > 3 else loss

    monkeypatch.setattr(VLM, "forward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"at step\(s\) \[4\].*checkpoints"):
        run_experiment(_cfg(tmp_path, run_name="nan"), tracking_uri=_uri(tmp_path))
    good = latest_checkpoint(tmp_path / "runs" / "nan")
    assert good.name == "step-000002"
    weights = VisionLanguageModel.from_pretrained(good).state_dict()
    assert all(torch.isfinite(t).all() for t in weights.values())
    client = _client(tmp_path)
    run = client.search_runs([client.get_experiment_by_name("nanovlm").experiment_id])[0]
    assert run.info.status == "FAILED"


def test_too_many_unreadable_samples_stop_the_run(tmp_path):
    from nanovlm.train import TooManySkipped

    # every sample is longer than max_length, so every one is skipped
    with pytest.raises(TooManySkipped, match="max_length=8"):
        run_experiment(_cfg(tmp_path, max_length=8), tracking_uri=_uri(tmp_path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_server_on_loopback_serves_the_run(tmp_path):
    result = run_experiment(_cfg(tmp_path, run_name="served", max_steps=2), tracking_uri=_uri(tmp_path))
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", _uri(tmp_path),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={result.run_id}"
        deadline = time.time() + 90
        while True:
            try:
                body = json.loads(urllib.request.urlopen(url, timeout=2).read())
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not come up"
                time.sleep(0.5)
        assert body["run"]["info"]["run_name"] == "served"
        metrics = {m["key"]: m["value"] for m in body["run"]["data"]["metrics"]}
        assert math.isfinite(metrics[metric_names.TRAIN_LOSS])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_torchrun_two_processes_train_one_run(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "experiments.run", "tiny", "--max_steps", "4", "--batch_size", "4", "--validation_steps", "2",
           "--save_checkpoint_steps", "2", "--train_samples", "64", "--val_samples", "8", "--run_name", "ddp",
           "--output_dir", str(tmp_path / "runs")]
    done = subprocess.run(cmd, env={**_env(tmp_path), "OMP_NUM_THREADS": "1"}, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("nanovlm").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # only rank 0 logs
    state = read_trainer_state(latest_checkpoint(tmp_path / "runs" / "ddp"))
    # per rank: 4 steps x 4 rows x 4 packed tiny samples; every rank's position is in the checkpoint
    assert state.step == 4 and state.samples_seen == 64 and state.positions == [64, 64]
    assert len(state.history[metric_names.TRAIN_LOSS]) == 4


def test_streamed_local_parquet_trains(tmp_path):
    from nanovlm.data import synthetic

    synthetic.save_parquet(synthetic.generate(40, seed=5), tmp_path / "train.parquet")
    cfg = _cfg(tmp_path, dataset=str(tmp_path / "train.parquet"), streaming=True, max_steps=3, train_samples=0)
    result = run_experiment(cfg, tracking_uri=_uri(tmp_path))
    state = read_trainer_state(result.checkpoint)
    assert state.step == 3 and state.samples_seen == 3 * 16  # 4 rows of 4 packed samples per step
    assert metric_names.eval_name("synthetic", "colour") not in result.metrics  # the blind control is for synthetic data
