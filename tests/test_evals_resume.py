"""Evaluations that survive a kill, say how sure they are and pin their data: predictions.jsonl
written item by item and resumed, lmms-eval's standard errors, hub dataset revisions."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, tiny_vlm
from fixtures_evals import StubModel

from evals import fixtures
from evals.aggregate import clt_stderr, mean_stderr
from evals.harness import evaluate_task, load_task_data
from evals.registry import TASKS, get_task
from evals.resume import key_path

MMSTAR = get_task("mmstar")
TIMING = ("seconds", "items_per_s", "items_timed")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---------------------------------------------------------------- resume (stub model: known replies)

def test_items_are_written_as_produced_and_reused_only_under_the_same_key(tmp_path, fixture_dir):
    data = load_task_data(MMSTAR, str(fixture_dir / "mmstar.parquet"))
    path = tmp_path / "mmstar" / "predictions.jsonl"
    first = evaluate_task(StubModel(lambda _: "B"), MMSTAR, data, batch_size=5, num_workers=0, progress=False,
                          predictions_path=path, model_id={"checkpoint": "a"})
    assert [x["index"] for x in _lines(path)] == list(range(36)) and key_path(path).is_file()
    assert _lines(path) == first.predictions

    # Drop the last 10 items and cut one line half-way, as a kill mid-write would.
    kept = path.read_text().splitlines(keepends=True)[:26]
    path.write_text("".join(kept[:-1]) + kept[-1][:15])
    again = StubModel(lambda _: "C")  # would answer differently: only the missing items may be asked
    resumed = evaluate_task(again, MMSTAR, data, batch_size=4, num_workers=0, progress=False, predictions_path=path,
                            model_id={"checkpoint": "a"})
    assert len(again.prompts) == 11 and resumed.items_timed == 11  # 10 missing + the half-written one
    assert [p["extracted"] for p in resumed.predictions] == ["B"] * 25 + ["C"] * 11
    assert _lines(path) == resumed.predictions

    # Another model (or settings): nothing reused.
    other = StubModel(lambda _: "D")
    fresh = evaluate_task(other, MMSTAR, data, num_workers=0, progress=False, predictions_path=path,
                          model_id={"checkpoint": "b"})
    assert len(other.prompts) == 36 and {p["extracted"] for p in fresh.predictions} == {"D"}
    shorter = StubModel(lambda _: "A")
    evaluate_task(shorter, MMSTAR, data, num_workers=0, progress=False, predictions_path=path,
                  model_id={"checkpoint": "b"}, max_new_tokens=4)
    assert len(shorter.prompts) == 36
    limited = StubModel(lambda _: "A")
    evaluate_task(limited, MMSTAR, load_task_data(MMSTAR, str(fixture_dir / "mmstar.parquet"), limit=30),
                  num_workers=0, progress=False, predictions_path=path, model_id={"checkpoint": "b"},
                  max_new_tokens=4)
    assert len(limited.prompts) == 30
    # Without a model identity, or with resume off, lines are written but never reused.
    for kwargs in ({"model_id": None}, {"model_id": {"checkpoint": "b"}, "resume": False}):
        stub = StubModel(lambda _: "A")
        evaluate_task(stub, MMSTAR, data, num_workers=0, progress=False, predictions_path=path, **kwargs)
        assert len(stub.prompts) == 36 and len(_lines(path)) == 36


def test_a_mismatch_is_logged(tmp_path, fixture_dir, caplog):
    data = load_task_data(MMSTAR, str(fixture_dir / "mmstar.parquet"), limit=4)
    path = tmp_path / "predictions.jsonl"
    evaluate_task(StubModel(lambda _: "B"), MMSTAR, data, num_workers=0, progress=False, predictions_path=path,
                  model_id="x")
    with caplog.at_level("INFO", logger="evals"):
        evaluate_task(StubModel(lambda _: "B"), MMSTAR.with_options(legacy_extract=True), data, num_workers=0,
                      progress=False, predictions_path=path, model_id="x")
    assert "starting afresh" in caplog.text and "task" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="evals"):
        stub = StubModel(lambda _: "B")
        evaluate_task(stub, MMSTAR.with_options(legacy_extract=True), data, num_workers=0, progress=False,
                      predictions_path=path, model_id="x")
    assert "4 of 4 items already done" in caplog.text and stub.prompts == []


def test_failed_items_are_resumed_as_failed(tmp_path):
    source = fixtures.write_task("mmstar", tmp_path / "m.parquet", n=6, corrupt=[2])
    data = load_task_data(MMSTAR, str(source))
    path = tmp_path / "out" / "predictions.jsonl"
    first = evaluate_task(StubModel(lambda _: "B"), MMSTAR, data, num_workers=0, progress=False,
                          predictions_path=path, model_id="x")
    again = evaluate_task(StubModel(lambda _: "B"), MMSTAR, data, num_workers=0, progress=False,
                          predictions_path=path, model_id="x")
    assert again.failed == first.failed and again.counts == first.counts and again.scores == first.scores
    assert again.items_timed == 0 and "unreadable image" in _lines(path)[2]["error"]


def _without_timing(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIMING}


def test_killed_command_resumes_to_the_uninterrupted_result(tmp_path):
    """`python -m evals.mmstar` killed (SIGKILL) mid-task, rerun: the same results.json."""
    from evals.cli import main

    ckpt = tiny_vlm("siglip", "smollm").save_pretrained(tmp_path / "run" / "checkpoints" / "step-3", meta={"step": 3})
    data = fixtures.write_task("mmstar", tmp_path / "mmstar.parquet", n=120)
    args = [str(ckpt), "--data", str(data), "--batch_size", "2", "--num_workers", "0", "--threads", "1",
            "--no_tracking", "--no_progress"]
    main(MMSTAR, [*args, "--out", str(tmp_path / "whole")])
    whole = tmp_path / "whole" / "mmstar"

    out = tmp_path / "killed" / "mmstar"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "evals.mmstar", *args, "--out", str(tmp_path / "killed")],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            predictions = out / "predictions.jsonl"
            if predictions.is_file() and predictions.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = (out / "predictions.jsonl").read_bytes().count(b"\n")
    assert 10 <= done < 120 and not (out / "results.json").exists()

    main(MMSTAR, [*args, "--out", str(tmp_path / "killed")])
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["items_timed"] <= 120 - done + 2  # the items in flight at most are redone
    assert _without_timing(resumed) == _without_timing(json.loads((whole / "results.json").read_text()))
    assert (out / "predictions.jsonl").read_text() == (whole / "predictions.jsonl").read_text()


# ---------------------------------------------------------------- standard errors

def test_mean_stderr_is_lmms_evals():
    values = [1.0, 0.0, 1.0, 1.0, 0.5]
    mu = sum(values) / 5
    assert mean_stderr(values) == math.sqrt(sum((x - mu) ** 2 for x in values) / 4) / math.sqrt(5)
    assert clt_stderr(values) == pytest.approx(mean_stderr(values), rel=1e-12)
    assert mean_stderr([1.0]) is None and clt_stderr([]) is None  # lmms-eval: "N/A" for one item


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_reports_lmms_evals_stderr(name, fixture_dir):
    task = get_task(name)
    data = load_task_data(task, str(fixture_dir / f"{name}.parquet"))
    result = evaluate_task(StubModel(lambda _: "B"), task, data, num_workers=0, progress=False)
    assert set(result.stderr) == set(result.scores) == set(result.stderr_clt)
    items = [p["score"] for p in result.predictions]
    assert result.accuracy_stderr == mean_stderr(items)
    for metric, value in result.stderr.items():
        if metric in task.mean_metrics:  # aggregation: mean -> mean_stderr of the metric's items
            assert value == mean_stderr(task.metric_items(data.rows, _scored(result))[metric])
        else:  # a task-specific aggregation: lmms-eval reports N/A
            assert value is None, metric
    expected_mean = {"mmstar": set(), "mme": set(), "ocrbench": set(), "textvqa": {"exact_match"},
                     "docvqa": {"anls"}, "ai2d": {"exact_match"}, "scienceqa_img": {"exact_match"},
                     "chartqa": {"relaxed_overall", "relaxed_human_split", "relaxed_augmented_split"}}[name]
    assert set(task.mean_metrics) == expected_mean
    if name == "mmstar":
        assert result.stderr_clt["average"] == clt_stderr(items)


def _scored(result):
    from evals.task import Scored

    return [Scored(p["score"], p["extracted"], p["gold"]) for p in result.predictions]


# ---------------------------------------------------------------- revisions

def test_revision_is_pinned_passed_to_the_hub_and_recorded(monkeypatch, fixture_dir):
    import datasets

    assert all(t.revision is None for t in TASKS.values())  # lmms-eval 0.7.3's yamls pin none
    local = datasets.load_dataset("parquet", data_files=str(fixture_dir / "mmstar.parquet"), split="train")
    calls = []

    def fake_load(*args, **kwargs):
        calls.append((args, kwargs))
        return local

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    pinned = MMSTAR.with_options(revision="0123abcd")
    data = load_task_data(pinned, None, limit=3)
    assert calls[-1] == (("Lin-Chen/MMStar", None), {"split": "val", "revision": "0123abcd"})
    assert data.describe()["revision"] == "0123abcd"
    data = load_task_data(pinned, None, limit=3, revision="feedbeef")  # --revision overrides the pin
    assert calls[-1][1]["revision"] == "feedbeef"
    load_task_data(pinned, "someone/else", limit=3)  # the pin is for the task's own dataset only
    assert calls[-1][1]["revision"] is None
    result = evaluate_task(StubModel(lambda _: "B"), pinned, load_task_data(pinned, None, limit=3), num_workers=0,
                           progress=False)
    assert result.data["revision"] == "0123abcd" and result.definition["revision"] == "0123abcd"


def test_revision_flag(monkeypatch, fixture_dir, tmp_path):
    import datasets

    from evals.cli import main

    local = datasets.load_dataset("parquet", data_files=str(fixture_dir / "mmstar.parquet"), split="train")
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: seen.append(k.get("revision")) or local)
    monkeypatch.setattr("evals.cli.load_model", lambda *a, **k: StubModel(lambda _: "B"))
    main(MMSTAR, ["ckpt-id", "--revision", "abc123", "--limit", "4", "--out", str(tmp_path), "--no_tracking",
                  "--no_progress", "--num_workers", "0"])
    results = json.loads((tmp_path / "mmstar" / "results.json").read_text())
    assert seen == ["abc123"] and results["data"]["revision"] == "abc123"


# ---------------------------------------------------------------- the size table shows them

def test_size_table_shows_standard_errors(tmp_path):
    import pandas as pd

    from reports import size_table

    frame = pd.DataFrame([
        {"run_id": "a" * 32, "experiment": "nanovlm-evals", "status": "FINISHED", "start_time": 2, "run_name": "e",
         "tags.preset": "tiny", "metrics.eval/mmstar/average": 0.3512, "metrics.eval/mmstar/average_stderr_clt": 0.0123,
         "metrics.eval/ai2d/exact_match": 0.5, "metrics.eval/ai2d/exact_match_stderr": 0.0456,
         "metrics.eval/mmstar/accuracy_stderr": 0.0123},
        {"run_id": "b" * 32, "experiment": "nanovlm-evals", "status": "FINISHED", "start_time": 1, "run_name": "f",
         "tags.preset": "other", "metrics.eval/mmstar/average": 31.25},
    ])
    table = size_table.build_table(frame)
    assert table.eval_metrics == ["eval/mmstar/average", "eval/ai2d/exact_match"]  # no *_stderr columns
    row = next(line for line in table.markdown.splitlines() if line.startswith("| `tiny`"))
    assert "0.351 ± 0.012 [^" in row and "| 0.500 ± 0.046 |" in row
    assert "lmms-eval reports no `average_stderr` (N/A)" in table.markdown
    assert "| 31.2 |" in next(line for line in table.markdown.splitlines() if line.startswith("| `other`"))
    csv = table.frame.set_index("preset")
    assert csv.loc["tiny", "eval/ai2d/exact_match_stderr"] == 0.0456
    assert csv.loc["tiny", "eval/mmstar/average_stderr_clt"] == 0.0123
    assert pd.isna(csv.loc["tiny", "eval/mmstar/average_stderr"])
    assert pd.isna(csv.loc["other", "eval/mmstar/average_stderr"])
    paths = size_table.write_outputs(table, tmp_path)  # the plot draws the error bar
    assert paths["params_vs_mmstar"].read_bytes()[:4] == b"\x89PNG"
