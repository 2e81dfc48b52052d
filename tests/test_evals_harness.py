"""The evaluation harness end to end on the offline fixtures: data checks, generation order,
failed and unrecognised items, outputs, MLflow, the multi-task runner and the benchmark command.

Most tests use a stub model (the tiny model's tokenizer and image transform, answers chosen by the
test) so that what is scored is known exactly; the CLI tests load a real tiny checkpoint.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import tiny_vlm
from fixtures_evals import StubModel, echo

from evals import fixtures
from evals.aggregate import MMSTAR_CATEGORIES, mmstar_scores
from evals.data import DataError
from evals.generation import Failed, generate
from evals.harness import evaluate_task, load_task_data
from evals.registry import TASKS, get_task
from nanovlm.data.processors import encode_prompt

MMSTAR = get_task("mmstar")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- fixtures and data checks

def test_fixtures_follow_each_task_schema(fixture_dir):
    for name, task in TASKS.items():
        data = load_task_data(task, str(fixture_dir / f"{name}.parquet"))
        assert len(data) == fixtures.DEFAULT_SIZES[name] and all(n == 1 for n in data.image_counts)
        for row in data.rows:
            task.prompt(row)  # every row makes a prompt
            task.judge(row, "")  # and can be scored
    mmstar = load_task_data(MMSTAR, str(fixture_dir / "mmstar.parquet")).rows
    assert {(r["category"], r["l2_category"]) for r in mmstar} == \
        {(c, l2) for c, l2s in MMSTAR_CATEGORIES.items() for l2 in l2s}
    assert {r["answer"] for r in mmstar} <= set("ABCD") and all("\nOptions: A: " in r["question"] for r in mmstar)
    mme = load_task_data(get_task("mme"), str(fixture_dir / "mme.parquet")).rows
    pairs: dict[str, list[str]] = {}
    for r in mme:
        pairs.setdefault(r["question_id"], []).append(r["answer"])
    assert all(sorted(v) == ["No", "Yes"] for v in pairs.values())
    assert {r["dataset"] for r in load_task_data(get_task("ocrbench"), str(fixture_dir / "ocrbench.parquet")).rows} \
        >= {"HME100k", "IIIT5K"}


def test_fixtures_are_reproducible(tmp_path):
    a = fixtures.write_task("ai2d", tmp_path / "a.parquet", n=6)
    b = fixtures.write_task("ai2d", tmp_path / "b.parquet", n=6)
    assert a.read_bytes() == b.read_bytes()


def test_missing_column_is_an_error_naming_it(tmp_path):
    rows = fixtures.mmstar_rows(4)
    for r in rows:
        del r["l2_category"]
    from datasets import Dataset

    Dataset.from_list(rows).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"missing column\(s\) \['l2_category'\].*--data"):
        load_task_data(MMSTAR, str(tmp_path / "bad.parquet"))


def test_unreachable_hub_says_to_pass_local_data():
    with pytest.raises(DataError, match="Pass --data with a local copy"):
        load_task_data(MMSTAR, None)  # tests run with HF_HUB_OFFLINE=1


def test_save_to_disk_folder_and_limit(tmp_path, fixture_dir):
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(fixture_dir / "mmstar.parquet"), split="train")
    datasets.DatasetDict({"val": ds}).save_to_disk(str(tmp_path / "dd"))
    data = load_task_data(MMSTAR, str(tmp_path / "dd"), limit=5)
    assert len(data) == 5 and data.total_rows == 36 and data.describe()["sha256"]


# ---------------------------------------------------------------- generation and scoring

def test_generation_keeps_item_order_across_sorted_batches_and_failures(tmp_path):
    path = fixtures.write_task("mmstar", tmp_path / "m.parquet", n=13, corrupt=[4])
    data = load_task_data(MMSTAR, str(path))
    stub = StubModel(echo)  # each reply repeats its own question
    questions = [MMSTAR.prompt(r) for r in data.rows]
    for workers in (0, 1):
        outputs = generate(stub, questions, data.images, counts=data.image_counts, batch_size=4, num_workers=workers,
                           max_new_tokens=200)
        assert isinstance(outputs[4], Failed) and "unreadable image" in outputs[4].error
        assert [o for i, o in enumerate(outputs) if i != 4] == [q for i, q in enumerate(questions) if i != 4]


def test_stub_scores_are_exact(fixture_dir):
    data = load_task_data(MMSTAR, str(fixture_dir / "mmstar.parquet"))
    result = evaluate_task(StubModel(lambda _: "B"), MMSTAR, data, batch_size=8, num_workers=0, progress=False)
    expected = [float(r["answer"] == "B") for r in data.rows]
    scores, _ = mmstar_scores([r["category"] for r in data.rows], [r["l2_category"] for r in data.rows], expected)
    assert result.scores == scores and set(scores) == {*MMSTAR_CATEGORIES, "average"}
    assert result.accuracy == sum(expected) / len(expected)
    assert result.counts == {"items": 36, "failed": 0, "unparsed": 0, "correct": int(sum(expected))}
    assert [p["extracted"] for p in result.predictions] == ["B"] * 36


def test_prompt_is_the_chat_template_around_the_lmms_eval_prompt(fixture_dir):
    data = load_task_data(MMSTAR, str(fixture_dir / "mmstar.parquet"), limit=1)
    stub = StubModel(lambda _: "A")
    evaluate_task(stub, MMSTAR, data, num_workers=0, progress=False)
    expected = stub.tokenizer.decode(encode_prompt(stub.tokenizer, MMSTAR.prompt(data.rows[0]), stub.image_placeholder))
    assert stub.prompts == [expected]
    assert expected.count("Answer with the option's letter from the given choices directly") == 1


def test_unreadable_image_fails_its_item_counted_and_listed(tmp_path):
    path = fixtures.write_task("mmstar", tmp_path / "m.parquet", n=12, corrupt=[3, 10])
    data = load_task_data(MMSTAR, str(path))
    result = evaluate_task(StubModel(lambda _: "B"), MMSTAR, data, batch_size=4, num_workers=0, progress=False)
    assert result.counts["failed"] == 2 and [f["id"] for f in result.failed] == [3, 10]
    for i in (3, 10):
        p = result.predictions[i]
        assert p["output"] is None and p["score"] == 0.0 and "unreadable image" in p["error"]
    assert len(result.predictions) == 12  # nothing dropped
    from evals.report import format_table

    assert "failed items: 3, 10" in format_table(result)


def test_all_images_unreadable_is_an_error(tmp_path):
    path = fixtures.write_task("mmstar", tmp_path / "m.parquet", n=2, corrupt=[0, 1])
    with pytest.raises(RuntimeError, match="every item failed"):
        evaluate_task(StubModel(lambda _: "B"), MMSTAR, load_task_data(MMSTAR, str(path)), num_workers=0,
                      progress=False)


def test_unrecognisable_answer_is_wrong_and_recorded(fixture_dir):
    data = load_task_data(MMSTAR, str(fixture_dir / "mmstar.parquet"), limit=6)
    result = evaluate_task(StubModel(lambda _: "no idea"), MMSTAR, data, num_workers=0, progress=False)
    assert result.counts["unparsed"] == 6 and result.accuracy == 0.0
    assert all(p["output"] == "no idea" and p["extracted"] == "" and not p["correct"] for p in result.predictions)


def test_legacy_extract_option(fixture_dir):
    data = load_task_data(MMSTAR, str(fixture_dir / "mmstar.parquet"))
    stub = StubModel(lambda _: "b")  # lower case: the old rule reads it, the new one does not
    new = evaluate_task(stub, MMSTAR, data, num_workers=0, progress=False)
    old = evaluate_task(stub, MMSTAR.with_options(legacy_extract=True), data, num_workers=0, progress=False)
    assert new.accuracy == 0.0 and old.accuracy == sum(r["answer"] == "B" for r in data.rows) / 36
    assert "legacy" in old.definition["rule"]


def test_stop_strings_cut_replies(fixture_dir):
    # DocVQA's yaml sets no `until`: lmms-eval's default "\n\n" cuts the reply
    data = load_task_data(get_task("docvqa"), str(fixture_dir / "docvqa.parquet"), limit=3)
    gold = data.rows[0]["answers"][0]
    result = evaluate_task(StubModel(lambda _: f"{gold}\n\nbecause"), get_task("docvqa"), data, num_workers=0,
                           progress=False)
    assert result.predictions[0]["output"] == gold and result.predictions[0]["score"] == pytest.approx(1.0)


def test_textvqa_stops_at_assistant_only(fixture_dir):
    # TextVQA's yaml sets `until: ["ASSISTANT:"]`, so "\n\n" does not cut: the whole reply is scored
    data = load_task_data(get_task("textvqa"), str(fixture_dir / "textvqa.parquet"), limit=3)
    gold = data.rows[0]["answers"][0]
    result = evaluate_task(StubModel(lambda _: f"{gold}\n\nThe sign is red."), get_task("textvqa"), data,
                           num_workers=0, progress=False)
    assert result.predictions[0]["output"] == f"{gold}\n\nThe sign is red." and result.predictions[0]["score"] == 0.0
    cut = evaluate_task(StubModel(lambda _: f"{gold} ASSISTANT: more"), get_task("textvqa"), data, num_workers=0,
                        progress=False)
    assert cut.predictions[0]["output"] == f"{gold} " and cut.predictions[0]["score"] == pytest.approx(1.0)


# ---------------------------------------------------------------- command lines, files, MLflow

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module (creating a sqlite store takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def tracked_checkpoint(tmp_path_factory, store):
    """A tiny checkpoint whose meta.json names a KILLED training run in the MLflow store."""
    from nanovlm.tracking import MLflowTracker

    root = tmp_path_factory.mktemp("tracked")
    uri = store
    tracker = MLflowTracker.start("nanovlm", "train", tracking_uri=uri, system_metrics=False)
    tracker.finish("KILLED")
    ckpt = tiny_vlm("siglip", "smollm").save_pretrained(root / "run" / "checkpoints" / "step-7",
                                                        meta={"run_id": tracker.run_id, "step": 7})
    return ckpt, uri, tracker.run_id


def test_mmstar_command_end_to_end(tracked_checkpoint, fixture_dir, capsys):
    from mlflow import MlflowClient

    from evals.cli import main
    from evals.mmstar import TASK

    ckpt, uri, run_id = tracked_checkpoint
    main(TASK, [str(ckpt), "--data", str(fixture_dir / "mmstar.parquet"), "--batch_size", "8", "--num_workers", "1",
                "--tracking_uri", uri, "--no_progress"])
    table = capsys.readouterr().out
    assert "average" in table and "science & technology" in table and "36 items, 0 failed" in table

    out = ckpt.parent / "evals" / "step-7" / "mmstar"  # beside the checkpoint, not in it
    results = json.loads((out / "results.json").read_text())
    assert results["reference"] == {"name": "lmms-eval", "version": "0.7.3"}
    assert results["checkpoint"] == str(ckpt) and results["counts"]["items"] == 36
    assert set(results["scores"]) == {*MMSTAR_CATEGORIES, "average"}
    assert results["definition"]["post_prompt"] == "\nAnswer with the option's letter from the given choices directly"
    assert "extract_mcq_answer" in results["definition"]["rule"]
    assert results["generation"]["max_new_tokens"] == 16 and results["generation"]["do_sample"] is False
    assert results["data"]["fingerprint"] and results["data"]["sha256"]["mmstar.parquet"]
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 36 and set(lines[0]) == {"index", "id", "output", "extracted", "gold", "score", "correct"}
    assert [x["index"] for x in lines] == list(range(36))  # data order
    assert results["stderr"] == {k: None for k in results["scores"]}  # lmms-eval: N/A for MMStar's aggregation
    assert results["stderr_clt"]["average"] is not None and results["accuracy_stderr"] is not None
    assert results["data"]["revision"] is None and results["definition"]["revision"] is None

    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "KILLED"  # the training run keeps its status
    assert run.data.metrics["eval/mmstar/average"] == pytest.approx(results["scores"]["average"])
    assert "eval/mmstar/science_technology" in run.data.metrics and "eval/mmstar/accuracy" in run.data.metrics
    assert "eval/mmstar/average_stderr" not in run.data.metrics  # N/A in lmms-eval: not logged
    assert run.data.metrics["eval/mmstar/average_stderr_clt"] == pytest.approx(results["stderr_clt"]["average"])
    assert run.data.metrics["eval/mmstar/accuracy_stderr"] == pytest.approx(results["accuracy_stderr"])
    history = MlflowClient(uri).get_metric_history(run_id, "eval/mmstar/average")
    assert [m.step for m in history] == [7]
    artifacts = [a.path for a in MlflowClient(uri).list_artifacts(run_id, "evals/mmstar")]
    assert "evals/mmstar/results.json" in artifacts
    (data,) = run.inputs.dataset_inputs  # the eval data is a run input
    assert data.dataset.name == f"{(fixture_dir / 'mmstar.parquet').resolve()}:val"
    assert data.dataset.digest == results["data"]["fingerprint"] and data.tags[0].value == "eval"
    assert json.loads(data.dataset.profile) == {"num_rows": 36}


def _one_error_line(capsys, exit_info) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_command_errors_are_one_line(tracked_checkpoint, tmp_path, capsys):
    from evals.cli import main

    ckpt, _, _ = tracked_checkpoint
    with pytest.raises(SystemExit) as exit_info:
        main(MMSTAR, [str(ckpt), "--data", str(tmp_path), "--no_tracking"])
    assert re.search("no parquet files|expected a .parquet", _one_error_line(capsys, exit_info))
    with pytest.raises(SystemExit) as exit_info:  # checked before the model loads: any checkpoint name
        main(MMSTAR, ["no-checkpoint", "--revision", "ai2d=abc", "--no_tracking"])
    assert "--revision 'ai2d=abc': ai2d is not a task of this run (mmstar)" in _one_error_line(capsys, exit_info)
    with pytest.raises(SystemExit) as exit_info:
        main(MMSTAR, [str(tmp_path / "no-such-checkpoint"), "--no_tracking"])
    assert "no-such-checkpoint" in _one_error_line(capsys, exit_info)


BAD_TASK_VALUES = [
    (["--tasks", "mmstr"], "--tasks: unknown task 'mmstr'. Did you mean mmstar?"),
    (["--tasks", ","], "--tasks ',': no task named"),
    (["--tasks", "mmstar", "--data", "/data/mmstar.parquet"], "--data '/data/mmstar.parquet': expected TASK=PATH"),
    (["--tasks", "mmstar", "--data", "mmstar="], "--data 'mmstar=': expected TASK=PATH_OR_HUB_ID"),
    (["--tasks", "mmstar", "--data", "=x.parquet"], "--data '=x.parquet': expected TASK=PATH_OR_HUB_ID"),
    (["--tasks", "mmstar", "--data", "mmstr=x"], "--data 'mmstr=x': unknown task 'mmstr'. Did you mean mmstar?"),
    (["--tasks", "mmstar", "--data", "ai2d=x"], "--data 'ai2d=x': ai2d is not a task of this run (mmstar)"),
    (["--tasks", "mmstar", "--data", "mmstar=a", "--data", "mmstar=b"], "mmstar already has 'a'"),
    (["--tasks", "mmstar,ai2d", "--revision", "abc", "--revision", "def"], "a second value for every task"),
    (["--tasks", "textvqa_val", "--revision", "textvqa="], "--revision 'textvqa=': expected [TASK=]REV"),
    (["--tasks", "mmstar", "--data_dir", "/nonexistent"], "--data_dir /nonexistent: no such folder"),
]


@pytest.mark.parametrize("argv, message", BAD_TASK_VALUES, ids=[" ".join(a) for a, _ in BAD_TASK_VALUES])
def test_bad_task_values_are_one_line_before_the_model_loads(argv, message, capsys, monkeypatch):
    from evals import cli
    from evals.run import main

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main(["ckpt", *argv, "--no_tracking"])
    assert message in _one_error_line(capsys, exit_info)


def test_task_values_per_task():
    from evals.task_args import data_sources, per_task, task_names

    names = task_names("mmstar,textvqa_val,mmstar")
    assert names == ["mmstar", "textvqa"]  # lmms-eval's name becomes ours; each task once
    assert task_names("all") == list(TASKS)
    # a TASK=REV overrides the bare REV for its task, whatever the order
    assert per_task(["textvqa_val=t1", "r0"], "--revision", names, bare=True) == {"mmstar": "r0", "textvqa": "t1"}
    assert per_task([], "--revision", names, bare=True) == {}
    assert data_sources(["mmstar=hub/m"], None, names) == {"mmstar": "hub/m"}
    assert data_sources(["mmstar=a=b.parquet"], None, names) == {"mmstar": "a=b.parquet"}  # split at the first =


def test_run_several_tasks_with_one_summary(tracked_checkpoint, fixture_dir, tmp_path, capsys):
    from evals.run import main

    ckpt, _, _ = tracked_checkpoint
    results = main([str(ckpt), "--tasks", "all", "--data_dir", str(fixture_dir), "--limit", "6", "--out",
                    str(tmp_path), "--no_tracking", "--no_progress", "--num_workers", "0"])
    assert [r.task for r in results] == list(TASKS)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["tasks"]) == set(TASKS)
    assert all((tmp_path / t / "predictions.jsonl").is_file() for t in TASKS)
    assert "mme_perception_score" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([str(ckpt), "--tasks", "mmstr", "--no_tracking"])
    assert "unknown task 'mmstr'. Did you mean mmstar?" in _one_error_line(capsys, exit_info)


def test_mlflow_new_run_and_running_run(tmp_path, store):
    from mlflow import MlflowClient

    from evals.mlflow_log import EXPERIMENT, eval_input, log_scores
    from nanovlm.tracking import MLflowTracker

    uri = store
    bare = tmp_path / "bare"
    bare.mkdir()
    new_id = log_scores({"mme": {"mme_perception_score": 1200.0}}, str(bare), tracking_uri=uri)
    run = MlflowClient(uri).get_run(new_id)
    assert run.data.metrics == {"eval/mme/mme_perception_score": 1200.0} and run.data.tags["checkpoint"] == str(bare)
    assert MlflowClient(uri).get_experiment(run.info.experiment_id).name == EXPERIMENT

    training = MLflowTracker.start("nanovlm", "still-training", tracking_uri=uri, system_metrics=False)
    try:
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"run_id": training.run_id, "step": 3}))
        data = eval_input({"source": "lmms-lab/ai2d", "split": "test", "rows": 10, "total_rows": 3088,
                           "fingerprint": "f" * 16})
        assert log_scores({"ai2d": {"exact_match": 0.5}}, str(tmp_path / "ckpt"), tracking_uri=uri,
                          datasets=[data]) == training.run_id
        run = MlflowClient(uri).get_run(training.run_id)
        assert run.info.status == "RUNNING" and run.data.metrics["eval/ai2d/exact_match"] == 0.5
        assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["lmms-lab/ai2d:test[:10]"]  # --limit 10
    finally:
        training.finish()


def test_bench_prints_items_per_second(capsys):
    from evals.bench import main

    rows = main(["--n", "8", "--batch_sizes", "4", "--num_workers", "0"])
    assert len(rows) == 1 and rows[0]["items_per_s"] > 0
    assert "items/s" in capsys.readouterr().out


def test_generate_answers_keeps_its_contract():
    from evals.generation import generate_answers
    from nanovlm.data import synthetic

    records = synthetic.generate(5, seed=3)
    model = tiny_vlm("siglip", "smollm")
    items = [(r["images"], r["texts"][0]["user"]) for r in records]
    batched = generate_answers(model, items, batch_size=4, max_new_tokens=4)
    single = [generate_answers(model, [item], batch_size=1, max_new_tokens=4)[0] for item in items]
    assert batched == single and all(isinstance(a, str) for a in batched)


def test_synthetic_benchmark_still_runs_on_the_shared_generation():
    from evals.synthetic import evaluate_with_control
    from nanovlm.data import synthetic

    out = evaluate_with_control(tiny_vlm("siglip", "smollm"), synthetic.generate(8, seed=1), batch_size=4)
    assert set(out) == {"synthetic", "synthetic_blind"} and "overall" in out["synthetic"]
