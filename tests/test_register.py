"""MLflow Model Registry: a tiny run's best checkpoint registered with lineage and metrics, loaded back by
alias; `experiments.run --register` in this process; a sweep registering its best trial."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from experiments import register as register_cli
from experiments.presets import get_preset
from experiments.runner import run_experiment
from nanovlm.config import override

SHORT = {"max_steps": 4, "validation_steps": 2, "eval_interval": 2, "save_checkpoint_steps": 2, "batch_size": 4,
         "train_samples": 64, "val_samples": 8}
FLAGS = ["--max_steps", "2", "--validation_steps", "2", "--eval_interval", "2", "--save_checkpoint_steps", "100",
         "--batch_size", "4", "--train_samples", "64", "--val_samples", "8"]


@pytest.fixture
def uri(tmp_path, mlflow_template, monkeypatch):
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield uri
    torch.set_num_threads(threads)


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _same_weights(model, checkpoint) -> None:
    stored = load_file(str(checkpoint / "model.safetensors"))
    state = model.state_dict()
    assert stored and all(torch.equal(state[k], v) for k, v in stored.items())


def test_register_run_tags_and_load_back(tmp_path, uri, monkeypatch):
    cfg = override(get_preset("tiny"), {**SHORT, "output_dir": str(tmp_path / "runs"), "run_name": "r1"})
    result = run_experiment(cfg, tracking_uri=uri)
    assert result.best_checkpoint is not None

    reg = register_cli.register_result(result, "tiny-vlm", alias="champion", tracking_uri=uri)
    client = _client(uri)
    version = client.get_model_version_by_alias("tiny-vlm", "champion")
    assert str(version.version) == reg.version == "1" and version.run_id == result.run_id
    run = client.get_run(result.run_id)
    # the source is the run's logged artifacts, not the local folder
    assert version.source.startswith(run.info.artifact_uri) and version.source.endswith("checkpoints/best")
    tags = version.tags
    assert tags["run_id"] == result.run_id and tags["checkpoint"] == "best"
    assert tags["dataset_fingerprint"] == run.data.tags["dataset_fingerprint"] and tags["dataset"] == "synthetic"
    assert tags["best_metric"] == "val/loss" and float(tags["best_metric_value"]) == pytest.approx(
        result.metrics["val/best_loss"])
    assert tags["step"] in ("2", "4")
    evals = [k for k in result.metrics if k.startswith("eval/")]
    assert evals and all(float(tags[k]) == pytest.approx(result.metrics[k]) for k in evals)
    assert result.run_id in version.description

    # registering the same checkpoint again reuses the version; an alias or version number loads it
    again = register_cli.register_result(result, "tiny-vlm", alias="candidate", tracking_uri=uri)
    assert again.reused and again.version == "1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the store comes from tracking_uri alone
    monkeypatch.chdir(tmp_path / "runs")
    for ref in ("champion", "candidate", 1):
        _same_weights(register_cli.load_registered("tiny-vlm", ref, tracking_uri=uri), result.best_checkpoint)

    # the local path is registered when the checkpoint was not logged (a large model)
    monkeypatch.setattr(register_cli, "_artifact_checkpoint", lambda *a: False)
    local = register_cli.register_run("tiny-vlm-local", result.run_id, checkpoint=result.checkpoint, tracking_uri=uri)
    assert local.checkpoint == "final" and local.source == result.checkpoint.resolve().as_uri()
    _same_weights(register_cli.load_registered("tiny-vlm-local", register_cli.DEFAULT_ALIAS, tracking_uri=uri), result.checkpoint)
    with pytest.raises(register_cli.RegisterError, match="reserved"):
        register_cli.register_result(result, "tiny-vlm", alias="latest", tracking_uri=uri)
    monkeypatch.undo()


def _published(tmp_path, uri, monkeypatch, checkpoint):
    """experiments.publish --register with the hub replaced."""
    import huggingface_hub

    from experiments import publish

    class FakeApi:
        def create_repo(self, **kw): ...

        def upload_folder(self, **kw):
            return type("Info", (), {"commit_url": "https://huggingface.co/me/tiny/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return publish.main([str(checkpoint), "me/tiny", "--tracking_uri", uri, "--register", "pub-vlm",
                         "--alias", "production"])


def test_run_register_flag(tmp_path, uri, capsys, monkeypatch):
    from experiments import run

    assert run.main(["tiny", *FLAGS, "--output_dir", str(tmp_path / "runs"), "--register", "cli-vlm"]) == 0
    assert "registered as cli-vlm version 1" in capsys.readouterr().out
    version = _client(uri).get_model_version_by_alias("cli-vlm", register_cli.DEFAULT_ALIAS)
    assert version.tags["checkpoint"] == "best"
    model = register_cli.load_registered("cli-vlm", register_cli.DEFAULT_ALIAS)
    _same_weights(model, Path(version.tags["checkpoint_path"]))
    # a bad alias is refused before anything trains
    assert run.main(["tiny", *FLAGS, "--register", "cli-vlm", "--alias", "v2"]) == 2

    # experiments.publish --register: the published checkpoint, tagged with the hub repo
    assert _published(tmp_path, uri, monkeypatch, version.tags["checkpoint_path"]) == 0
    published = _client(uri).get_model_version_by_alias("pub-vlm", "production")
    assert published.tags["hf_repo"] == "me/tiny" and published.run_id == version.run_id


def test_sweep_registers_best_trial(tmp_path, uri):
    from sweeps import lr

    argv = ["--preset", "tiny", *FLAGS, "--n_trials", "2", "--storage", f"sqlite:///{tmp_path}/optuna.db",
            "--tracking_uri", uri, "--study_name", "reg", "--register", "sweep-vlm", "--alias", "champion"]
    assert lr.main(argv) == 0
    import optuna

    study = optuna.load_study(study_name="reg", storage=f"sqlite:///{tmp_path}/optuna.db")
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    version = _client(uri).get_model_version_by_alias("sweep-vlm", "champion")
    assert version.run_id == best_run and version.tags["sweep.trial_number"] == str(study.best_trial.number)
    # rerunning the finished sweep adds no second version
    assert lr.main(argv) == 0
    assert len(_client(uri).search_model_versions("name = 'sweep-vlm'")) == 1
