"""`python -m sweeps.lr` in this process, on the tiny preset with trials of a few steps: bad input is
refused before any trial, a 4-trial sweep leaves nested MLflow runs and plots, and a designed
clearly-bad trial is pruned. Workers in other processes: test_sweeps_workers.py and _postgres.py."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest

from nanovlm import metrics as metric_names
from sweeps import lr
from sweeps import space as search_space
from sweeps.names import TAG_ROLE, TAG_STATE, TAG_TRIAL
from sweeps.workers import retried_from

# Trials of 6 steps with a validation every 2: seconds each on 2 CPU cores.
SHORT = ["--preset", "tiny", "--max_steps", "6", "--validation_steps", "2", "--eval_interval", "2",
         "--save_checkpoint_steps", "100", "--batch_size", "4", "--train_samples", "64", "--val_samples", "8"]
Done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on 2 shared cores a second one mostly waits (about 5x slower trials here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stores(tmp_path, mlflow_template, monkeypatch):
    """(optuna storage URL, MLflow URI) in tmp_path; runs/ lands there too."""
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"


def _main(stores, *extra: str) -> int:
    storage, uri = stores
    return lr.main([*SHORT, "--storage", storage, "--tracking_uri", uri, *extra])


def _runs(uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("nanovlm")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.mark.parametrize("extra, message", [
    (["--space", "lr_mp=1e-1:1e-4"], "inverted range"),
    (["--space", "lr_mp=1e-3:1e-3"], "empty range"),
    (["--space", "lr_backbone=1e-6:1e-3"], "unknown search parameter 'lr_backbone'. Did you mean lr_backbones"),
    (["--space", "freeze_vision_encoder=0:1"], "true/false, it has no range"),
    (["--space", "lr_mp=0:1e-2"], "needs LOW > 0"),
    (["--space", "lr_mp=off", "--space", "lr_backbones=off", "--space", "freeze_vision_encoder=off"],
     "search space is empty"),
    (["--metric", "eval/synthetic/colr"], "not logged by the trials. Did you mean eval/synthetic/colour"),
    (["--metric", "train/loss", "--pruner", "median"], "compares what a trial reports while it trains"),
    (["--enqueue", "lr_mp=5,lr_backbones=1e-4,freeze_vision_encoder=false"], "outside the space"),
    (["--lr_mp", "0.01", "--space", "lr_mp=1e-3:1e-2"], "both by --space and by --lr_projector"),  # lr_mp: old name
    (["--run_name", "x"], "--study_name"),
    (["--grace_period", "5", "--heartbeat_interval", "10"], "must be longer than --heartbeat_interval"),
])
def test_bad_input_is_refused_before_any_store_or_trial(stores, tmp_path, capsys, extra, message):
    assert _main(stores, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "runs").exists()


def test_optuna_and_mlflow_cannot_share_a_database(stores, capsys):
    _, uri = stores
    assert _main((uri, uri)) == 2
    assert "alembic_version" in capsys.readouterr().err


def test_space_specs_and_flags():
    space, fixed = search_space.apply_specs(search_space.default_space(), ["lr_mp=1e-3:1e-2", "freeze_vision_encoder=true",
                                                     "lr_language=0,1e-5", "lr_backbones=off"])
    assert space == {"lr_projector": search_space.LogRange(1e-3, 1e-2), "lr_language": search_space.Choice((0.0, 1e-5))}
    assert fixed == {"freeze_vision_encoder": True}
    assert search_space.LogRange(1e-4, 1e-2).grid(3) == [1e-4, 1e-3, 1e-2]
    assert set(search_space.default_space(separate_lrs=True)) == {"lr_projector", "lr_vision", "lr_language",
                                                       "freeze_vision_encoder"}
    # a runner flag for a searched parameter fixes it; the default study name follows the flags
    settings = lr.settings_from_args(lr.parse(lr.build_parser(), [*SHORT, "--freeze_vision_encoder", "--dry_run"]))
    assert "freeze_vision_encoder" not in settings.space and settings.base.train.freeze_vision_encoder
    assert settings.study_name.startswith("lr-tiny-") and "max_steps=6" in settings.study_name
    assert settings.pruner == "median" and settings.direction == "minimize"
    accuracy = lr.settings_from_args(lr.parse(lr.build_parser(), [*SHORT, "--metric", "eval/synthetic/overall"]))
    assert accuracy.direction == "maximize" and accuracy.pruner == "none"  # accuracies are not pruned on val loss


def test_four_trial_sweep_nests_runs_and_plots(stores, capsys):
    storage, uri = stores
    assert _main(stores, "--n_trials", "4", "--study_name", "four") == 0
    out = capsys.readouterr().out
    assert "Best: trial" in out and "Top " in out
    assert "In the MLflow UI: http://127.0.0.1:5000/#/experiments/" in out and "viewStateShareKey=sweep-four" in out

    study = optuna.load_study(study_name="four", storage=storage)
    trials = study.get_trials(states=Done)
    assert len(trials) == 4 == len(study.trials)
    assert len({t.params["lr_projector"] for t in trials}) == 4  # no repeated draws

    client, parents, children = _runs(uri)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "four"
    assert len(children) == 4 and {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    by_number = {int(c.data.tags[TAG_TRIAL]): c for c in children}
    for t in trials:
        run = by_number[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert float(run.data.params["train.lr_projector"]) == pytest.approx(t.params["lr_projector"])
        assert run.data.params["train.freeze_vision_encoder"] == str(t.params["freeze_vision_encoder"])
        expected = ("FINISHED", "COMPLETE") if t.state == optuna.trial.TrialState.COMPLETE else ("KILLED", "PRUNED")
        assert (run.info.status, run.data.tags[TAG_STATE]) == expected

    # the sweep's view in the UI: its runs, the searched parameters as columns
    view = client.get_experiment(parent.info.experiment_id).tags["mlflow.sharedViewState.sweep-four"]
    state = json.loads(json.loads(view)["state"])
    assert state["searchFilter"] == "tags.`sweep.study_name` = 'four'"
    assert {"params.`train.lr_projector`", "params.`train.freeze_vision_encoder`", "metrics.`val/loss`"} <= \
        set(state["selectedColumns"])

    best = study.best_trial
    assert parent.data.tags["best.trial"] == str(best.number)
    assert parent.data.metrics[f"best/{metric_names.VAL_LOSS}"] == pytest.approx(best.value)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    for name in ("trials.csv", "best.json", "summary.txt", "plots/optimization_history.png",
                 "plots/param_importances.png", "plots/parallel_coordinate.png"):
        assert name in artifacts, name
    png = client.download_artifacts(parent.info.run_id, "plots/optimization_history.png")
    assert open(png, "rb").read(4) == b"\x89PNG"
    table = open(client.download_artifacts(parent.info.run_id, "trials.csv")).read().splitlines()
    assert table[0].startswith("number,state,val/loss,lr_projector,lr_backbones,freeze_vision_encoder")
    assert len(table) == 5

    # the same command again resumes the finished study: nothing more to do, no new parent run
    assert _main(stores, "--n_trials", "4", "--study_name", "four") == 0
    assert len(optuna.load_study(study_name="four", storage=storage).trials) == 4
    assert len(_runs(uri)[1]) == 1


def test_a_clearly_bad_trial_is_pruned(stores):
    storage, uri = stores
    good = ["--enqueue", "lr_mp=0.01,lr_backbones=0.001,freeze_vision_encoder=false",
            "--enqueue", "lr_mp=0.02,lr_backbones=0.0005,freeze_vision_encoder=false"]
    # barely learning: the projector and the LM at the bottom of their ranges, the vision encoder frozen
    bad = ["--enqueue", "lr_mp=0.0001,lr_backbones=0.000001,freeze_vision_encoder=true"]
    assert _main(stores, "--n_trials", "3", "--study_name", "prune", "--prune_startup_trials", "2", *good, *bad) == 0

    study = optuna.load_study(study_name="prune", storage=storage)
    first, second, third = study.trials
    assert (first.state.name, second.state.name, third.state.name) == ("COMPLETE", "COMPLETE", "PRUNED")
    assert third.params["lr_projector"] == 0.0001
    assert list(third.intermediate_values) == [2]  # stopped at its first validation, not after 6 steps
    assert third.intermediate_values[2] > max(first.intermediate_values[2], second.intermediate_values[2]) + 0.2

    client, _, children = _runs(uri)
    run = next(c for c in children if c.data.tags[TAG_TRIAL] == "2")
    assert run.info.status == "KILLED" and run.data.tags[TAG_STATE] == "PRUNED"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, metric_names.TRAIN_LOSS)) == 2


def test_a_benchmark_score_is_reported_while_each_trial_trains(stores):
    storage, _ = stores
    assert _main(stores, "--n_trials", "2", "--study_name", "bench", "--metric", "eval/synthetic/overall",
                 "--eval_steps", "2", "--eval_limit", "8", "--pruner", "none") == 0
    study = optuna.load_study(study_name="bench", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in study.trials:  # what a pruner compares: the score at every evaluation, the last one the result
        assert sorted(trial.intermediate_values) == [2, 4, 6]
        assert trial.intermediate_values[6] == trial.value


def test_grid_sampler_visits_each_point_once(stores):
    storage, _ = stores
    grid = ["--sampler", "grid", "--space", "lr_mp=1e-3,1e-2", "--space", "lr_backbones=off",
            "--space", "freeze_vision_encoder=true", "--max_steps", "2", "--pruner", "none"]
    assert _main(stores, "--n_trials", "10", "--study_name", "grid", *grid) == 0  # 10 capped at the grid's 2
    trials = optuna.load_study(study_name="grid", storage=storage).trials
    assert sorted(t.params["lr_projector"] for t in trials) == [1e-3, 1e-2]
    assert all(t.state.name == "COMPLETE" for t in trials)


def test_diverged_trial_counts_as_pruned_and_interrupted_trial_is_queued_again(stores, monkeypatch):
    from nanovlm.train import NonFiniteLoss
    from sweeps import objective as engine

    storage, uri = stores
    outcomes = iter([NonFiniteLoss("the training loss became nan at step 1"), KeyboardInterrupt()])

    def fake_run(cfg, **kwargs):  # no training: only what the sweep does with the outcome
        raise next(outcomes)

    monkeypatch.setattr(engine, "run_experiment", fake_run)
    assert _main(stores, "--n_trials", "3", "--study_name", "stops") == 130  # Ctrl-C / SIGTERM
    trials = optuna.load_study(study_name="stops", storage=storage).trials
    assert [t.state.name for t in trials] == ["PRUNED", "FAIL", "WAITING"]
    assert retried_from(trials[2]) == 1 and trials[2].params == trials[1].params
    _, parents, _ = _runs(uri)
    assert parents[0].info.status == "KILLED"
