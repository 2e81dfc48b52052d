"""Runs are never lost or mixed: one process per run folder, no second run in a used folder, resume
past a damaged checkpoint, a new sqlite store created once under concurrency, a down server fails fast."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import run, runner
from experiments.presets import get_preset
from experiments.runner import claim_new_run_dir, find_resume_checkpoint, run_experiment
from nanovlm import metrics as metric_names
from nanovlm.checkpoint import checkpoint_problem, latest_checkpoint, read_trainer_state, write_manifest
from nanovlm.config import ConfigError, override

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"max_steps": 6, "validation_steps": 3, "eval_interval": 3, "save_checkpoint_steps": 2, "batch_size": 4,
         "train_samples": 64, "val_samples": 8, "eval_tasks": ""}
CLI = ["tiny", "--batch_size", "4", "--train_samples", "64", "--val_samples", "8", "--eval_tasks", ""]


def _cfg(tmp_path, **changes):
    return override(get_preset("tiny"), {**SHORT, "output_dir": str(tmp_path / "runs"), **changes})


def _uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def _env(tmp_path, **extra) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": _uri(tmp_path), "PYTHONPATH": str(ROOT),
            "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "OMP_NUM_THREADS": "1", **extra}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_same_run_name_twice_is_refused_and_resume_still_works(tmp_path):
    first = run_experiment(_cfg(tmp_path, run_name="twice", max_steps=2), tracking_uri=_uri(tmp_path))
    before = sorted(p.name for p in (first.run_dir / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match=r"run folder .*twice already holds a run .*--resume.*another --run_name"):
        run_experiment(_cfg(tmp_path, run_name="twice", max_steps=2), tracking_uri=_uri(tmp_path))
    assert sorted(p.name for p in (first.run_dir / "checkpoints").iterdir()) == before  # untouched
    # the lock of the finished run is released: resuming it is allowed
    assert find_resume_checkpoint(_cfg(tmp_path, run_name="twice", max_steps=2), "latest").name == "step-000002"


def test_derived_names_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(runner.time, "strftime", lambda fmt: "20260101-120000")
    cfg = _cfg(tmp_path)
    (a, lock_a), (b, lock_b) = claim_new_run_dir(cfg), claim_new_run_dir(cfg)
    try:
        assert a != b and b.name == a.name + "-2"
        (b / "checkpoints" / "step-000002").mkdir(parents=True)  # resume finds the suffixed run too
        for name in ("trainer_state.json", "model.safetensors"):
            (b / "checkpoints" / "step-000002" / name).write_text("{}")
        assert find_resume_checkpoint(cfg, "latest").parent.parent == b
    finally:
        lock_a.release()
        lock_b.release()


def test_a_second_process_cannot_use_a_run_folder_in_use(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "runs" / "busy"
    args = [*CLI, "--output_dir", str(tmp_path / "runs"), "--run_name", "busy"]
    holder = subprocess.Popen([sys.executable, "-m", "experiments.run", *args, "--max_steps", "5000",
                               "--save_checkpoint_steps", "2", "--validation_steps", "5000"], env=_env(tmp_path),
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while latest_checkpoint(run_dir) is None:  # training, with a checkpoint that --resume would take
            assert holder.poll() is None and time.time() < deadline, holder.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        expected = f"error: run folder {run_dir} is in use by another process (pid {holder.pid})"
        # The second process is this one (the lock is the holder's, whoever asks): no interpreter start per try.
        monkeypatch.chdir(tmp_path)
        for name, value in _env(tmp_path).items():
            monkeypatch.setenv(name, value)
        for extra in ([], ["--resume"], ["--resume", str(run_dir)]):
            assert run.main([*args, "--max_steps", "2", *extra]) == 2
            lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
            assert lines == [expected], extra
            assert holder.poll() is None, "the first run must still be training"
    finally:
        holder.terminate()
        holder.wait(timeout=60)


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, caplog):
    cfg = _cfg(tmp_path, run_name="dmg")
    first = run_experiment(cfg, tracking_uri=_uri(tmp_path))
    newest = latest_checkpoint(first.run_dir)
    assert newest.name == "step-000006" and (newest / "manifest.json").exists() and checkpoint_problem(newest) is None
    weights = newest / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:
        fh.truncate(size // 2)

    with caplog.at_level(logging.WARNING, logger="nanovlm.runner"):
        resumed = run_experiment(cfg, resume="latest", tracking_uri=_uri(tmp_path))
    warning = [r.getMessage() for r in caplog.records if "skipping damaged checkpoint" in r.getMessage()]
    assert warning and "step-000006" in warning[0] and f"expected {size}" in warning[0] \
        and "resuming from step-000004" in warning[0], warning
    state = read_trainer_state(resumed.checkpoint)
    assert resumed.checkpoint.name == "step-000006" and checkpoint_problem(resumed.checkpoint) is None
    assert [s for s, _ in state.history[metric_names.TRAIN_LOSS]] == [1, 2, 3, 4, 5, 6]  # steps 5 and 6 trained again
    assert resumed.run_id == first.run_id


def test_checkpoint_completeness_is_checked(tmp_path):
    old = tmp_path / "legacy"  # written before manifests: complete if the two essential files are there
    old.mkdir()
    (old / "trainer_state.json").write_text("{}")
    (old / "model.safetensors").write_bytes(b"x" * 10)
    assert checkpoint_problem(old) is None
    (old / "trainer_state.json").unlink()
    assert checkpoint_problem(old) == "trainer_state.json missing"

    new = tmp_path / "new"
    new.mkdir()
    (new / "trainer_state.json").write_text('{"step": 1}')
    (new / "model.safetensors").write_bytes(b"x" * 10)
    write_manifest(new)
    assert checkpoint_problem(new) is None
    (new / "trainer_state.json").write_text('{"step": 2}')  # same size, other content
    assert "sha256" in checkpoint_problem(new)
    (new / "trainer_state.json").unlink()
    assert checkpoint_problem(new) == "trainer_state.json missing"


def test_processes_creating_one_new_store_at_once_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"
    code = ("import sys; from nanovlm.tracking import MLflowTracker; "
            "MLflowTracker.start('race', sys.argv[1], tracking_uri=sys.argv[2], system_metrics=False).finish()")
    procs = [subprocess.Popen([sys.executable, "-c", code, f"r{i}", uri], env=_env(tmp_path), cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read()[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["r0", "r1", "r2"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_an_unreachable_tracking_server_fails_fast_with_one_line(tmp_path):
    from nanovlm.tracking import check_server

    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.time()
    with pytest.raises(RuntimeError, match="does not answer"):
        check_server(uri)
    assert time.time() - start < 15

    start = time.time()
    done = subprocess.run([sys.executable, "-m", "experiments.run", *CLI, "--max_steps", "2", "--output_dir",
                           str(tmp_path / "runs")], env=_env(tmp_path, MLFLOW_TRACKING_URI=uri), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and uri in lines[0] and "mlflow server" in lines[0] \
        and "unset MLFLOW_TRACKING_URI" in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert time.time() - start < 60  # process start and imports included; MLflow's retries would take minutes
