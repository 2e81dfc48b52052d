"""The many-machine setup, on one machine and for real: a PostgreSQL server from Debian's packages
(started here, as the `postgres` user, on 127.0.0.1) holds the Optuna study in one database and,
behind an `mlflow server`, the MLflow store in another; two `python -m sweeps.lr` workers share the
study. Skipped only when the PostgreSQL binaries are absent (`bash .ci/postgres` installs them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweeps.postgres import PostgresUnavailable, find_bindir, free_port, temporary_server
from sweeps.names import TAG_ROLE, TAG_TRIAL
from tests.conftest import wait_for_url

ROOT = Path(__file__).resolve().parents[1]
# 10-step trials: long enough that neither worker can finish all 4 before the other starts
SHORT = ["--preset", "tiny", "--max_steps", "10", "--validation_steps", "2", "--eval_interval", "2",
         "--save_checkpoint_steps", "100", "--batch_size", "4", "--train_samples", "64", "--val_samples", "8"]

try:
    find_bindir()
    MISSING = ""
except PostgresUnavailable as e:
    MISSING = str(e)


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=MISSING or "PostgreSQL present")
def test_two_workers_on_postgresql_with_an_mlflow_server(tmp_path):
    with temporary_server(databases=("optuna", "mlflow")) as pg:
        # Two databases on one server: Optuna and MLflow both keep an alembic_version table.
        port = free_port()
        server_log = tmp_path / "mlflow-server.log"
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", pg.url("mlflow"),
             "--artifacts-destination", (tmp_path / "mlartifacts").as_uri(), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=tmp_path, stdout=open(server_log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_url(f"http://127.0.0.1:{port}/health", server, server_log, timeout=180)
            env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
                   "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "OMP_NUM_THREADS": "1"}
            # A plain postgresql:// URL, as a user would write it: the psycopg driver is filled in.
            storage = f"postgresql://postgres@127.0.0.1:{pg.port}/optuna"
            cmd = [sys.executable, "-m", "sweeps.lr", *SHORT, "--n_trials", "4", "--study_name", "pg",
                   "--storage", storage]
            logs = [tmp_path / f"worker{i}.log" for i in range(2)]
            workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
                       for log in logs]
            for proc, log in zip(workers, logs):
                assert proc.wait(timeout=400) == 0, log.read_text()[-4000:]

            trials = optuna.load_study(study_name="pg", storage=pg.url("optuna")).trials
            finished = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
            assert 4 <= len(finished) <= 5
            assert len({t.user_attrs["worker"] for t in finished}) == 2  # both workers took part

            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
            runs = client.search_runs([client.get_experiment_by_name("nanovlm").experiment_id], max_results=1000)
            parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
            children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
            assert len(parents) == 1 and parents[0].info.status == "FINISHED"
            assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
            assert {int(c.data.tags[TAG_TRIAL]) for c in children} == {t.number for t in trials}
            artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
            assert {"trials.csv", "best.json", "plots"} <= artifacts
            best = json.loads(Path(client.download_artifacts(parents[0].info.run_id, "best.json",
                                                             str(tmp_path))).read_text())
            assert best["trial"] in {t.number for t in finished}

            # the runs really are in PostgreSQL, in their own database beside Optuna's
            assert int(pg.psql("mlflow", "SELECT count(*) FROM runs")) == len(runs)
            assert int(pg.psql("optuna", "SELECT count(*) FROM trials")) == len(trials)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
