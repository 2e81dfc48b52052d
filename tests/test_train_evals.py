"""Benchmarks inside training runs: scores logged at their steps, the best checkpoint by a benchmark score."""

from __future__ import annotations

import json

import pytest

from evals.fixtures import write_all
from experiments.runner import run_experiment
from nanovlm import metrics as metric_names
from nanovlm.config import ConfigError
from test_runner import _cfg, _client, _uri


def _history(tmp_path, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in _client(tmp_path).get_metric_history(run_id, key)]


def test_benchmarks_every_n_steps_pick_the_best_checkpoint(tmp_path):
    fixtures = tmp_path / "evalfix"
    write_all(fixtures)
    best = metric_names.eval_name("mmstar", "average")
    cfg = _cfg(tmp_path, eval_tasks="synthetic,mmstar", eval_steps=2, eval_limit=12, eval_data_dir=str(fixtures),
               log_interval=5, validation_steps=5, eval_interval=5, save_checkpoint_steps=5,  # only evaluations read
               best_metric=best, max_steps=6, run_name="bench")
    result = run_experiment(cfg, tracking_uri=_uri(tmp_path))

    scores = _history(tmp_path, result.run_id, best)
    assert [step for step, _ in scores] == [2, 4, 6]  # every eval_steps, the last step included
    assert [s for s, _ in _history(tmp_path, result.run_id, metric_names.eval_name("synthetic", "overall"))] == [2, 4, 6]
    # the names and numbers `python -m evals.mmstar` logs: MLflow-safe scores, accuracy and its standard error
    for score in ("accuracy", "accuracy_stderr", "failed"):
        assert [s for s, _ in _history(tmp_path, result.run_id, metric_names.eval_name("mmstar", score))] == [2, 4, 6], score
    logged = _client(tmp_path).get_run(result.run_id).data.metrics
    categories = [k for k in logged if k.startswith("eval/mmstar/") and " " not in k and "perception" in k]
    assert categories and not [k for k in logged if "&" in k or " " in k]  # "coarse perception" -> coarse_perception
    assert [s for s, _ in _history(tmp_path, result.run_id, metric_names.eval_name("synthetic_blind", "overall"))] == [2, 4, 6]
    # the best checkpoint is the first step with the highest score (ties keep the earlier one)
    top = max(value for _, value in scores)
    meta = json.loads((result.best_checkpoint / "meta.json").read_text())
    assert meta["best_metric"] == best and meta[best] == top
    assert meta["step"] == next(step for step, value in scores if value == top)
    assert result.metrics[best] == scores[-1][1]


@pytest.mark.parametrize("changes,message", [
    ({"eval_tasks": "mmstr"}, "Did you mean mmstar"),
    ({"eval_tasks": "synthetic", "best_metric": "eval/mmstar/average"}, "not a score of --eval_tasks"),
    ({"eval_tasks": "mmstar", "eval_data_dir": "/nonexistent"}, "no mmstar.parquet there"),
])
def test_bad_benchmark_settings_fail_before_training(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(_cfg(tmp_path, **changes), tracking_uri=_uri(tmp_path))
    assert not list((tmp_path / "runs").glob("*/checkpoints"))


def _split_worker(rank: int, world: int, port: int, fixtures: str, out: str) -> None:
    """One rank: replies to its share of the MMStar fixture (a stub model answering in varied styles)."""
    import os

    import torch

    from evals.during_training import evaluate_split
    from fixtures_evals import StubModel, varied
    from evals.harness import load_task_data
    from evals.registry import get_task
    from nanovlm.distributed import Dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        task = get_task("mmstar")
        data = load_task_data(task, f"{fixtures}/mmstar.parquet", limit=18)
        result = evaluate_split(StubModel(varied), task, data, Dist(rank, rank, world))
        if rank == 0:
            json.dump({"scores": result.scores, "predictions": result.predictions}, open(out, "w"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_benchmark_items_split_over_two_processes_give_the_one_process_scores(tmp_path):
    import torch.multiprocessing as mp

    from evals.harness import evaluate_task, load_task_data
    from evals.registry import get_task
    from fixtures_evals import StubModel, varied
    from test_runner import _free_port

    fixtures = tmp_path / "evalfix"
    write_all(fixtures)
    mp.spawn(_split_worker, args=(2, _free_port(), str(fixtures), str(tmp_path / "split.json")), nprocs=2)
    split = json.loads((tmp_path / "split.json").read_text())

    task = get_task("mmstar")
    alone = evaluate_task(StubModel(varied), task, load_task_data(task, str(fixtures / "mmstar.parquet"), limit=18),
                          progress=False)
    assert split["scores"] == alone.scores
    assert [p["output"] for p in split["predictions"]] == [p["output"] for p in alone.predictions]
    assert len(split["predictions"]) == 18
    assert len({p["output"] for p in alone.predictions}) > 1  # distinct replies: the order is checked too


@pytest.mark.slow
def test_async_benchmarks_are_logged_to_the_run_at_their_checkpoints_steps(tmp_path):
    """--eval_async on CPU: the checkpoints are saved as training goes and scored after it, by
    `python -m evals.run` in another process, into the same MLflow run at their own steps."""
    fixtures = tmp_path / "evalfix"
    write_all(fixtures)
    cfg = _cfg(tmp_path, eval_tasks="mmstar", eval_steps=3, eval_limit=8, eval_data_dir=str(fixtures),
               eval_async=True, max_steps=6, run_name="async")
    result = run_experiment(cfg, tracking_uri=_uri(tmp_path))
    assert [step for step, _ in _history(tmp_path, result.run_id, metric_names.eval_name("mmstar", "average"))] == [3, 6]
    assert sorted(p.name for p in (result.run_dir / "checkpoints" / "eval").iterdir()) == ["step-000003",
                                                                                            "step-000006"]
    run = _client(tmp_path).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    with pytest.raises(ConfigError, match="too late to pick checkpoints"):
        run_experiment(_cfg(tmp_path, eval_tasks="mmstar", eval_data_dir=str(fixtures), eval_async=True,
                            best_metric="eval/mmstar/average"), tracking_uri=_uri(tmp_path))
