"""Sweep workers as separate `python -m sweeps.lr` processes on one sqlite study: a worker killed with
SIGKILL mid-trial leaves that trial failed and retried by the next worker, with no completed trial
lost; two workers started together share one study and one MLflow parent run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from sweeps.storage import creation_lock
from sweeps.names import TAG_RETRIED_FROM, TAG_ROLE, TAG_STATE, TAG_TRIAL
from sweeps.workers import retried_from

ROOT = Path(__file__).resolve().parents[1]
# Trials of 8 steps with a validation every 2: long enough to be killed in the middle.
SHORT = ["--preset", "tiny", "--max_steps", "8", "--validation_steps", "2", "--eval_interval", "2",
         "--save_checkpoint_steps", "100", "--batch_size", "4", "--train_samples", "64", "--val_samples", "8"]
State = optuna.trial.TrialState


def _worker(tmp_path: Path, study: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
           "OMP_NUM_THREADS": "1"}  # one thread per worker: 2 workers on 2 cores
    cmd = [sys.executable, "-m", "sweeps.lr", *SHORT, "--study_name", study, "--storage",
           f"sqlite:///{tmp_path}/optuna.db", "--tracking_uri", f"sqlite:///{tmp_path}/mlflow.db", *extra]
    log = open(tmp_path / f"worker-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0, Path(proc.stdout.name).read_text()[-4000:]


def _storage(tmp_path: Path) -> optuna.storages.RDBStorage:
    url = f"sqlite:///{tmp_path}/optuna.db"
    with creation_lock(url):  # the workers may be creating the schema at this moment
        return optuna.storages.RDBStorage(url)


def _runs(tmp_path: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("nanovlm").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_sigkill_mid_trial_then_the_same_command_resumes(tmp_path, mlflow_template):
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    # heartbeats every second; a trial silent for 3 s belongs to a dead worker
    args = ("--n_trials", "2", "--pruner", "none", "--heartbeat_interval", "1", "--grace_period", "3")
    victim = _worker(tmp_path, "kr", *args)
    deadline = time.time() + 240
    while True:  # kill once a trial is complete and the next one has validated at least once
        assert victim.poll() is None and time.time() < deadline, Path(victim.stdout.name).read_text()[-3000:]
        if (tmp_path / "optuna.db").exists():
            try:
                trials = optuna.load_study(study_name="kr", storage=_storage(tmp_path)).trials
            except KeyError:  # the study is not created yet
                trials = []
            running = [t for t in trials if t.state == State.RUNNING and t.intermediate_values]
            if running and any(t.state == State.COMPLETE for t in trials):
                break
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()

    before = optuna.load_study(study_name="kr", storage=_storage(tmp_path)).trials
    killed = [t for t in before if t.state == State.RUNNING]
    assert len(killed) == 1, [t.state for t in before]
    killed = killed[0]
    completed = {t.number: (t.value, t.datetime_complete) for t in before if t.state == State.COMPLETE}

    _finish(_worker(tmp_path, "kr", *args))  # the same command, after the grace period has passed

    after = optuna.load_study(study_name="kr", storage=_storage(tmp_path)).trials
    states = {t.number: t.state for t in after}
    assert states[killed.number] == State.FAIL
    assert sum(s == State.COMPLETE for s in states.values()) == 2 and sum(s == State.FAIL for s in states.values()) == 1
    retry = next(t for t in after if retried_from(t) == killed.number)
    assert retry.state == State.COMPLETE and retry.params == killed.params
    for t in after:  # no completed trial lost or redone
        if t.number in completed:
            assert (t.value, t.datetime_complete) == completed[t.number]

    parents, children = _runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    by_number = {int(c.data.tags[TAG_TRIAL]): c for c in children}
    dead = by_number[killed.number]
    assert dead.info.status == "KILLED" and dead.data.tags[TAG_STATE] == "FAIL"
    again = by_number[retry.number]
    assert again.info.status == "FINISHED" and again.data.tags[TAG_RETRIED_FROM] == str(killed.number)


def test_two_workers_share_one_study(tmp_path, mlflow_template):
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    # both start at once on a new study file: one creates it, the other waits for the schema and loads it
    # 12-step trials: long enough that neither worker can finish all 4 before the other starts
    workers = [_worker(tmp_path, "pair", "--n_trials", "4", "--max_steps", "12") for _ in range(2)]
    for proc in workers:
        _finish(proc)

    trials = optuna.load_study(study_name="pair", storage=_storage(tmp_path)).trials
    finished = [t for t in trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert 4 <= len(finished) <= 5  # two workers asking at the same instant may start one extra
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both took part
    assert len({(t.params["lr_projector"], t.params["lr_backbones"]) for t in finished}) == len(finished)  # no repeats

    parents, children = _runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(trials)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {int(c.data.tags[TAG_TRIAL]) for c in children} == {t.number for t in trials}
