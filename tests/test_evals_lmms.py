"""The lmms-eval plugin (`nanovlm_lab`) and `python -m evals.lmms`, when lmms-eval is installed.

lmms-eval runs its own task definitions on the fixtures (through `<task>_local` task files); the
model is a stub with varied replies, so the scores are not trivially zero. Every score must equal
the native harness's on the same replies. Skipped, with the reason, without the `eval` extra.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from fixtures_evals import StubModel, varied


def test_plugin_module_imports_without_lmms_eval():
    import evals.lmms_plugin as plugin

    assert plugin.MODEL_NAME == "nanovlm_lab" and plugin.CLASS_PATH == "evals.lmms_model.NanoVLMLab"


def test_lmms_command_without_lmms_eval_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # as if not installed
    from evals.lmms import main

    with pytest.raises(SystemExit, match=r"pip install '\.\[eval\]'"):
        main(["ckpt", "--tasks", "mmstar"])


def assert_same_stderrs(got: dict, want: dict, task: str) -> None:
    # pytest.approx refuses None (lmms-eval's N/A) beside a relative tolerance: N/A must match exactly
    assert got.keys() == want.keys(), task
    for metric, value in want.items():
        expected = None if value is None else pytest.approx(value, rel=1e-9, abs=1e-12)
        assert got[metric] == expected, (task, metric)


@pytest.mark.slow
def test_lmms_eval_scores_equal_the_native_harness(tmp_path, monkeypatch, capsys):
    pytest.importorskip("lmms_eval", reason="lmms-eval (the optional `eval` extra) is not installed")
    from lmms_eval import models

    from evals import fixtures
    from evals.harness import evaluate_task, load_task_data
    from evals.lmms import main
    from evals.lmms_plugin import MODEL_NAME
    from evals.registry import TASKS
    from nanovlm.model.vlm import VisionLanguageModel

    torch.set_num_threads(1)
    stub = StubModel(varied)
    monkeypatch.setattr(VisionLanguageModel, "from_pretrained", classmethod(lambda cls, *a, **k: stub))
    fixtures.write_all(tmp_path / "fix", sizes={"mmstar": 36, "mme": 28})
    (tmp_path / "ckpt").mkdir()
    main([str(tmp_path / "ckpt"), "--tasks", "all", "--data_dir", str(tmp_path / "fix"), "--batch_size", "8",
          "--out", str(tmp_path / "out"), "--no_tracking"])
    assert MODEL_NAME in models.MODEL_REGISTRY_V2.list_model_names()
    report = json.loads((tmp_path / "out" / "lmms_results.json").read_text())
    assert report["task_names"]["mmstar"] == "mmstar_local"
    for name, task in TASKS.items():
        native = evaluate_task(stub, task, load_task_data(task, str(tmp_path / "fix" / f"{name}.parquet")),
                               batch_size=8, num_workers=0, progress=False)
        assert report["scores"][name] == pytest.approx(native.scores, rel=1e-12, abs=1e-12), name
        # standard errors as lmms-eval reports them: mean_stderr, or N/A (None) for task aggregations
        assert_same_stderrs(report["stderr"][name], native.stderr, name)
        assert_same_stderrs(report["stderr_clt"][name], native.stderr_clt, name)
    mmstar = report["scores"]["mmstar"]
    assert 0 < mmstar["average"] < 1  # the stub's varied replies are sometimes right
    assert "mmstar (lmms-eval mmstar_local)" in capsys.readouterr().out
