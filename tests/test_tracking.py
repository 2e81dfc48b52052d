"""nanovlm.tracking against a real sqlite MLflow store: async metrics and flush, statuses, resume, nesting, orphans."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from nanovlm import dashboard
from nanovlm.tracking import (
    HOST_TAG,
    PID_TAG,
    MLflowTracker,
    NullTracker,
    Tracker,
    default_tracking_uri,
    get_or_create_experiment,
    mark_orphans_killed,
)
from nanovlm.tracking.inputs import hub_revision


def victim(experiment: str, uri: str, go, run_ids) -> None:
    """A process that opens a run, buffers one metric, reports the run id and waits to be killed."""
    go.wait()
    with MLflowTracker.start(experiment, tracking_uri=uri, system_metrics=False) as tracker:
        tracker.log_metrics({"seen": 1.0}, step=0)
        run_ids.send(tracker.run_id)
        time.sleep(60)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(uri, victims): one database for the module, and two victim processes using it.

    Time is the reason for this shape. Creating MLflow's sqlite schema takes seconds, so tests share
    a store (each uses its own experiment). A fresh Python spends seconds importing mlflow, so the
    victims are forked from this process once mlflow is imported, but before it has opened any
    database: a forked child must not share the parent's database connections.
    """
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (the slow import, shared by the forks)
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    fork = multiprocessing.get_context("fork")
    go = fork.Event()
    victims = {}
    for name in ("sigkill", "sigterm"):
        receive, send = fork.Pipe(duplex=False)
        proc = fork.Process(target=victim, args=(f"victim-{name}", uri, go, send), daemon=True)
        proc.start()
        victims[name] = (proc, receive)
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the schema
    go.set()
    yield uri, victims
    for proc, _ in victims.values():
        proc.kill()
        proc.join()


@pytest.fixture
def uri(store):
    return store[0]


@pytest.fixture(autouse=True)
def no_system_metrics(monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")


@pytest.fixture
def experiment(request):
    return request.node.name


@pytest.fixture
def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def victim_run(store, name: str) -> tuple[multiprocessing.Process, str]:
    proc, run_ids = store[1][name]
    assert run_ids.poll(timeout=30), f"victim {name} did not start a run (exit code {proc.exitcode})"
    return proc, run_ids.recv()


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_default_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NANOVLM_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default_tracking_uri().startswith("sqlite:////")  # absolute
    monkeypatch.setenv("NANOVLM_HOME", str(tmp_path / "home"))
    assert default_tracking_uri() == f"sqlite:///{(tmp_path / 'home').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert default_tracking_uri() == "http://tracking:5000"


def test_null_tracker_has_the_interface():
    with NullTracker() as tracker:
        assert isinstance(tracker, Tracker) and tracker.run_id is None
        tracker.log_params({"a": 1})
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_dataset("synthetic", "abc", "training", data=[1, 2])
        tracker.finish("FAILED")


def test_params_tags_and_buffered_metrics(uri, client, experiment, caplog):
    params = {f"p{i}": i for i in range(150)}  # more than one log_batch allows
    params["long"] = "x" * 7000
    with MLflowTracker.start(experiment, "r", tags={"preset": "tiny"}, tracking_uri=uri,
                             flush_every_s=1e9) as tracker:
        assert tracker.tracking_uri == uri and isinstance(tracker, Tracker)
        tracker.log_params(params)
        tracker.set_tags({"stage": "pretrain"})
        for step in range(1200):  # more metrics than one log_batch allows
            tracker.log_metrics({"loss": 1.0 / (step + 1), "bad": math.nan if step == 3 else step}, step=step)
        tracker.log_metrics({"bad": math.inf}, step=1200)
        assert history(client, tracker.run_id, "loss") == []  # still buffered
        tracker.flush()
        assert history(client, tracker.run_id, "loss")[:2] == [(0, 1.0), (1, 0.5)]
        assert len(history(client, tracker.run_id, "loss")) == 1200
        tracker.log_metrics({"loss": 0.0}, step=1200)

    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params["p149"] == "149" and len(run.data.params["long"]) == 6000
    tags = run.data.tags
    assert tags["preset"] == "tiny" and tags["stage"] == "pretrain"
    assert tags[HOST_TAG] and tags[PID_TAG] == str(os.getpid())
    assert history(client, tracker.run_id, "loss")[-1] == (1200, 0.0)  # sent by finish
    bad_steps = [step for step, _ in history(client, tracker.run_id, "bad")]
    assert 3 not in bad_steps and 1200 not in bad_steps and len(bad_steps) == 1199
    assert "metric bad is nan" in caplog.text


def test_metrics_sent_once_interval_passed(uri, client, experiment):
    with MLflowTracker.start(experiment, tracking_uri=uri, flush_every_s=0) as tracker:
        tracker.log_metrics({"loss": 2.0}, step=5)  # stored in the background, no flush needed
        deadline = time.monotonic() + 30
        while not history(client, tracker.run_id, "loss") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert history(client, tracker.run_id, "loss") == [(5, 2.0)]


def test_log_metrics_never_waits_for_the_store_and_flush_does(uri, client, experiment):
    """What train() relies on: metrics flushed before a checkpoint is saved are in the store, even if the
    process is SIGKILLed right after; and a slow store does not hold up the training steps."""
    with MLflowTracker.start(experiment, tracking_uri=uri, flush_every_s=0) as tracker:
        other = sqlite3.connect(uri[len("sqlite:///"):], isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")  # another process writing: MLflow waits for the lock
        threading.Timer(1.0, other.execute, ["COMMIT"]).start()
        start = time.monotonic()
        tracker.log_metrics({"loss": 3.0}, step=7)
        assert time.monotonic() - start < 0.5
        tracker.flush()
        assert time.monotonic() - start >= 0.9  # waited for the lock, and so for the write
        other.close()
        assert history(client, tracker.run_id, "loss") == [(7, 3.0)]


def test_failed_sends_are_retried_and_invalid_keys_dropped(uri, client, experiment, monkeypatch, caplog):
    with MLflowTracker.start(experiment, tracking_uri=uri, flush_every_s=1e9) as tracker:
        real_log_batch, calls = tracker.client.log_batch, []

        def flaky_log_batch(*args, **kwargs):
            calls.append(kwargs)
            if len(calls) == 1:
                raise ConnectionError("tracking server away")
            return real_log_batch(*args, **kwargs)

        monkeypatch.setattr(tracker.client, "log_batch", flaky_log_batch)
        tracker.log_metrics({"loss": 2.0, "bad key!": 1.0}, step=0)
        tracker.flush()  # fails: kept for later
        assert history(client, tracker.run_id, "loss") == []
        tracker.flush()  # the batch is rejected for "bad key!": the other keys still go through
        tracker.log_metrics({"loss": 1.0, "bad key!": 1.0}, step=1)
    assert history(client, tracker.run_id, "loss") == [(0, 2.0), (1, 1.0)]
    assert "will retry" in caplog.text and caplog.text.count("MLflow rejects metric bad key!") == 1


def test_a_batch_that_failed_in_the_background_is_stored_at_flush(uri, client, experiment, caplog):
    with MLflowTracker.start(experiment, tracking_uri=uri, flush_every_s=0) as tracker:
        tracker.log_metrics({"loss": 2.0, "bad key!": 1.0}, step=0)  # sent at once, rejected by MLflow's thread
        tracker.flush()  # stored directly: the valid keys get through, the bad one is dropped
        assert history(client, tracker.run_id, "loss") == [(0, 2.0)]
        tracker.log_metrics({"loss": 1.0, "bad key!": 1.0}, step=1)
    assert history(client, tracker.run_id, "loss") == [(0, 2.0), (1, 1.0)]
    assert caplog.text.count("MLflow rejects metric bad key!") == 1


def test_context_manager_statuses(uri, client, experiment):
    before = signal.getsignal(signal.SIGTERM)
    with MLflowTracker.start(experiment, tracking_uri=uri) as ok:
        assert signal.getsignal(signal.SIGTERM) is not before  # ours while the run is open
    with pytest.raises(ValueError):
        with MLflowTracker.start(experiment, tracking_uri=uri) as failed:
            raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt):
        with MLflowTracker.start(experiment, tracking_uri=uri) as killed:
            raise KeyboardInterrupt
    assert [client.get_run(t.run_id).info.status for t in (ok, failed, killed)] == ["FINISHED", "FAILED", "KILLED"]
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    killed.finish("FINISHED")  # a second finish changes nothing
    assert client.get_run(killed.run_id).info.status == "KILLED"


def test_resume_continues_the_same_run(uri, client, experiment, caplog):
    with MLflowTracker.start(experiment, tracking_uri=uri) as first:
        first.log_params({"lr": 0.1, "steps": 10})
        first.log_metrics({"loss": 1.0}, step=0)
        first.finish("KILLED")
    with MLflowTracker.start(experiment, run_id=first.run_id, tracking_uri=uri) as second:
        assert second.run_id == first.run_id
        assert client.get_run(second.run_id).info.status == "RUNNING"
        with caplog.at_level(logging.WARNING, logger="nanovlm.tracking"):
            second.log_params({"lr": 0.1, "steps": 20, "new": "yes"})  # same, changed, new
        second.log_metrics({"loss": 0.5}, step=1)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "steps": "10", "new": "yes"}
    assert "param steps is already '10'" in caplog.text
    assert history(client, first.run_id, "loss") == [(0, 1.0), (1, 0.5)]


def test_nested_runs_under_an_open_parent(uri, client, experiment):
    with MLflowTracker.start(experiment, "sweep", tracking_uri=uri) as parent:
        children = []
        for trial in range(2):
            with MLflowTracker.start(experiment, f"trial-{trial}", parent_run_id=parent.run_id,
                                     tracking_uri=uri) as child:
                child.log_metrics({"score": float(trial)}, step=0)
            children.append(child.run_id)
        assert client.get_run(parent.run_id).info.status == "RUNNING"
    for trial, run_id in enumerate(children):
        run = client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent.run_id
        assert run.info.status == "FINISHED" and run.data.metrics == {"score": float(trial)}
    assert client.get_run(parent.run_id).info.status == "FINISHED"


def test_artifacts_file_and_directory(uri, client, experiment, tmp_path):
    (tmp_path / "report.txt").write_text("hello")
    ckpt = tmp_path / "step-100"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"\0")
    with MLflowTracker.start(experiment, tracking_uri=uri) as tracker:
        tracker.log_artifact(tmp_path / "report.txt")
        tracker.log_artifact(ckpt, "checkpoints/final")
        with pytest.raises(FileNotFoundError):
            tracker.log_artifact(tmp_path / "missing")
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"report.txt", "checkpoints"}
    assert [a.path for a in client.list_artifacts(tracker.run_id, "checkpoints/final")] == [
        "checkpoints/final/model.safetensors"]
    # Artifacts live beside the database, whatever the working directory was.
    location = client.get_experiment(tracker.experiment_id).artifact_location
    assert location == (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()


def test_experiment_creation_race(uri, client, experiment):
    existing = client.create_experiment(experiment)
    lookups = []

    class LateClient:  # sees no experiment at first, as if another process created it meanwhile
        def __getattr__(self, name):
            return getattr(client, name)

        def get_experiment_by_name(self, name):
            lookups.append(name)
            return None if len(lookups) == 1 else client.get_experiment_by_name(name)

    assert get_or_create_experiment(LateClient(), experiment, uri) == existing
    assert len(lookups) == 2


def test_experiments_open_on_their_runs_with_a_training_view(uri, client, experiment):
    with MLflowTracker.start(experiment, tracking_uri=uri) as tracker:
        pass
    tags = client.get_experiment(tracker.experiment_id).tags
    assert tags[dashboard.KIND_TAG] == dashboard.TRAINING_KIND
    view = json.loads(tags[dashboard.VIEW_TAG_PREFIX + dashboard.TRAINING_VIEW])
    state = json.loads(view["state"])
    assert view["name"] == "Training curves"
    assert [s["name"] for s in state["compareRunSections"]] == list(dashboard.TRAINING_SECTIONS)
    assert state["compareRunCharts"][0]["metricKey"] == "train/loss"
    # an experiment made before (or by hand) gets the missing tags; a kind someone chose stays
    older = client.create_experiment(f"{experiment}-old", tags={dashboard.KIND_TAG: "genai_development"})
    with MLflowTracker.start(f"{experiment}-old", tracking_uri=uri) as tracker:
        assert tracker.experiment_id == older
    tags = client.get_experiment(older).tags
    assert tags[dashboard.KIND_TAG] == "genai_development" and dashboard.VIEW_TAG_PREFIX + dashboard.TRAINING_VIEW in tags
    link = dashboard.ui_link(uri, older, view=dashboard.TRAINING_VIEW)
    assert link.startswith(f"http://127.0.0.1:5000/#/experiments/{older}/runs?workflowType=machine_learning")
    assert tracker.save_view("mine", dashboard.runs_view("Mine", {"Loss": ["train/loss"]})).endswith("viewStateShareKey=mine"
                                                                                        "&compareRunsMode=CHART")
    assert dashboard.VIEW_TAG_PREFIX + "mine" in client.get_experiment(older).tags


def test_datasets_are_run_inputs(uri, client, experiment, tmp_path):
    local = tmp_path / "data.parquet"
    local.write_bytes(b"x")
    with MLflowTracker.start(experiment, tracking_uri=uri) as tracker:
        tracker.log_dataset("synthetic", "5d8f3f0056c0482d", "training", data=list(range(64)))
        tracker.log_dataset("synthetic", "5d8f3f0056c0482d", "validation", data=list(range(8)))
        tracker.log_dataset("org/set", "a" * 16, "eval", rows=100, subset="sub", split="val[:100]", revision="abc123")
        tracker.log_dataset(str(local), "stream:" + "x" * 40, "training")  # longer than MLflow's digest limit
        tracker.log_dataset("synthetic", "5d8f3f0056c0482d", "training", data=list(range(64)))  # a resume: no copy
    inputs = client.get_run(tracker.run_id).inputs.dataset_inputs
    found = {(i.dataset.name, i.tags[0].value): i.dataset for i in inputs}
    assert len(inputs) == 4 and all(i.tags[0].key == "mlflow.data.context" for i in inputs)
    train, val = found["synthetic:training", "training"], found["synthetic:validation", "validation"]
    assert train.digest == val.digest == "5d8f3f0056c0482d" and train.source_type == "code"
    assert json.loads(train.profile) == {"num_rows": 64} and json.loads(val.profile) == {"num_rows": 8}
    hub = found["org/set:val[:100]", "eval"]
    assert hub.source_type == "hugging_face" and json.loads(hub.profile) == {"num_rows": 100, "revision": "abc123"}
    source = json.loads(hub.source)
    assert (source["path"], source["config_name"], source["split"], source["revision"]) == \
        ("org/set", "sub", "val[:100]", "abc123")
    stream = found[f"{local}:training", "training"]
    assert stream.source_type == "local" and len(stream.digest) == 16
    assert json.loads(stream.profile)["fingerprint"] == "stream:" + "x" * 40
    # the fingerprint finds the runs that read the data
    runs = client.search_runs([tracker.experiment_id], "dataset.digest = '5d8f3f0056c0482d'")
    assert [r.info.run_id for r in runs] == [tracker.run_id]


def test_hub_revision_is_read_from_the_datasets_cache():
    class Cached:  # a datasets.Dataset as `datasets` caches a hub dataset: <name>/<config>/<version>/<commit>/
        cache_files = [{"filename": f"/c/org___set/sub/0.0.0/{'0123abcd' * 5}/set-train.arrow"}]

    assert hub_revision(Cached()) == "0123abcd" * 5
    Cached.cache_files = [{"filename": "/c/parquet/default-1a2b/0.0.0/9f8e7d6c5b4a3921/parquet-train.arrow"}]
    assert hub_revision(Cached()) is None and hub_revision([1, 2]) is None


def test_sigkilled_run_is_marked_killed_and_live_runs_are_not(store, uri, client):
    experiment = "victim-sigkill"
    proc, orphan = victim_run(store, "sigkill")
    proc.kill()
    proc.join()
    elsewhere = client.create_run(client.get_experiment_by_name(experiment).experiment_id,
                                  tags={HOST_TAG: "another-host", PID_TAG: "999999999"}).info.run_id
    assert client.get_run(orphan).info.status == "RUNNING"
    with MLflowTracker.start(experiment, tracking_uri=uri) as live:
        assert mark_orphans_killed(experiment, tracking_uri=uri) == [orphan]
        assert client.get_run(live.run_id).info.status == "RUNNING"
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert mark_orphans_killed("no such experiment", tracking_uri=uri) == []


def test_sigterm_ends_the_run_as_killed(store, client):
    proc, run_id = victim_run(store, "sigterm")
    proc.terminate()  # SIGTERM
    proc.join(timeout=30)
    assert proc.exitcode == 1  # multiprocessing's code for an exception, here Terminated
    assert client.get_run(run_id).info.status == "KILLED"
    assert history(client, run_id, "seen") == [(0, 1.0)]  # the buffer was flushed on the way out
