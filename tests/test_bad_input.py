"""Bad input and faults: one clear line (exit 2) or a counted skip, never a traceback for a user's mistake."""

from __future__ import annotations

import errno
import io
import re
import shutil

import pytest
import torch
from PIL import Image

from conftest import tiny_vlm
from experiments import run
from nanovlm.checks import check_config, looks_local, too_many_skipped
from nanovlm.config import ConfigError, DataConfig
from nanovlm.data import synthetic
from nanovlm.data.datasets import SampleProcessor, load_splits

TINY = ["tiny", "--max_steps", "2", "--batch_size", "1", "--train_samples", "8", "--val_samples", "4"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Runs, stores and the working directory in tmp_path; nothing is created there by a refused input."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NANOVLM_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


@pytest.fixture
def store(home, mlflow_template):
    shutil.copy(mlflow_template, home / "mlflow.db")
    return home


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]|(?=error: )", err) if line.startswith("error: ")]  # tqdm: \r
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------- config values, before anything starts

CONFIG_CASES = [
    (["--batch_size", "-4"], "train.batch_size=-4: must be at least 1"),
    (["--gradient_accumulation_steps", "0"], "train.gradient_accumulation_steps=0: must be at least 1"),
    (["--max_steps", "0"], "train.max_steps=0: must be at least 1"),
    (["--validation_steps", "0"], "train.validation_steps=0: must be at least 1"),
    (["--save_checkpoint_steps", "0"], "train.save_checkpoint_steps=0: must be at least 1"),
    (["--log_interval", "0"], "train.log_interval=0: must be at least 1"),
    (["--keep_checkpoints", "0"], "train.keep_checkpoints=0: must be at least 1"),
    (["--lr_mp", "nan"], "train.lr_projector=nan: must be a finite number"),  # lr_mp: its old name
    (["--lr_backbones=-1e-3"], "train.lr_backbones=-0.001: must be at least 0"),
    (["--lr_vision", "-2"], "train.lr_vision=-2.0: must be at least 0 (or -1 = lr_backbones)"),
    (["--warmup_ratio", "1.5"], "train.warmup_ratio=1.5: must be a number from 0 to 1"),
    (["--max_skip_fraction", "inf"], "data.max_skip_fraction=inf: must be a finite number"),
    (["--device", "tpu"], "train.device='tpu': must be auto, cpu or cuda"),
    (["--image_token", ""], "model.image_token='': must not be empty"),
    (["--val_samples", "0"], "data.val_samples=0: must be at least 1"),
    (["--freeze_vision_encoder", "--lr_vision", "1e-3"], "freeze_vision_encoder=true conflicts with train.lr_vision"),
    (["--lr_mp", "0", "--lr_backbones", "0"], "every learning rate is 0"),
    (["--json"], "--json prints the --dry_run report as JSON"),
    (["--dataset", "data/nope.parquet"], "no such file or directory: data/nope.parquet"),
    (["--dataset", "./nope"], "no such file or directory: ./nope"),
    (["--set", "train.batch_size=0", "--dry_run"], "train.batch_size=0"),  # checked before the dry run too
    (["--cuda_graphs", "--device", "cpu"], "train.cuda_graphs=true needs a CUDA GPU, and this run is on the CPU"),
    (["--cuda_graphs", "--loss_kernel", "liger"], "train.loss_kernel=liger reads its target count with .item()"),
    (["--attention", "flex_attention", "--device", "cpu"], "train.attention=flex_attention: FlexAttention has no "
                                                            "backward pass on the CPU"),
    (["--loss_kernel", "liger", "--device", "cpu"], "train.loss_kernel=liger is a CUDA (Triton) kernel and this run "
                                                     "is on the CPU"),
]
if not torch.cuda.is_available():
    CONFIG_CASES.append((["--device", "cuda"], "train.device='cuda': this machine has no CUDA device"))


@pytest.mark.parametrize("extra, message", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_bad_config_is_one_line_before_anything_starts(home, capsys, extra, message):
    assert run.main([*TINY, *extra]) == 2
    assert message in _error(capsys)
    assert not (home / "mlflow.db").exists() and not (home / "runs").exists()  # no MLflow run, no folder


def test_cuda_graphs_under_torchrun_is_one_line(home, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run.main([*TINY, "--cuda_graphs", "--dry_run"]) == 2
    assert "cuda_graphs=true runs in one process" in _error(capsys)


def test_liger_loss_without_liger_kernel_on_cuda_is_one_line(home, capsys, monkeypatch):
    from nanovlm import checks
    from nanovlm.model import loss

    monkeypatch.setattr(checks, "_on_cpu", lambda device: False)  # as on a GPU machine
    monkeypatch.setattr(loss, "liger_available", lambda: False)
    assert run.main([*TINY, "--loss_kernel", "liger", "--dry_run"]) == 2
    assert "liger-kernel is not installed (or its triton does not work): pip install -e '.[gpu]'" in _error(capsys)


def test_local_looking_backbone_typo_is_not_blamed_on_the_hub(home, capsys):
    assert run.main(["original_small", "--random_init", "--language_model", "models/my-lm/v2", "--dry_run"]) == 2
    assert _error(capsys) == "error: model.language_model: no such file or directory: models/my-lm/v2"


def test_hub_ids_and_paths_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for hub in ("HuggingFaceM4/the_cauldron", "google/siglip2-base-patch16-512", "synthetic"):
        assert not looks_local(hub), hub
    for local in ("./x", "/abs/x", "~/x", "x.parquet", "a/b/c", "data/nope", "train.jsonl"):
        assert looks_local(local), local


def test_presets_pass_the_checks():
    from experiments.presets import PRESETS, get_preset

    for name in PRESETS:
        check_config(get_preset(name))


# ----------------------------------------------------------------------------- empty or unreadable datasets


def _empty_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
                        ("texts", pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string())])))])
    pq.write_table(pa.Table.from_pylist([], schema=schema), str(path))


def _layout(tmp_path, kind):
    if kind == "parquet":
        _empty_parquet(tmp_path / "e.parquet")
        return tmp_path / "e.parquet", "0 rows in 1 parquet file(s)"
    if kind == "datasets_parquet":
        (tmp_path / "d").mkdir()
        synthetic.to_dataset(synthetic.generate(3)).select([]).to_parquet(str(tmp_path / "d" / "x.parquet"))
        return tmp_path / "d", "0 rows in 1 parquet file(s)"
    if kind == "save_to_disk":
        synthetic.to_dataset(synthetic.generate(3)).select([]).save_to_disk(str(tmp_path / "s"))
        return tmp_path / "s", "the save_to_disk folder holds 0 rows"
    if kind == "empty_folder":
        (tmp_path / "f").mkdir()
        return tmp_path / "f", "holds no .parquet files and is not a save_to_disk folder (found: nothing)"
    (tmp_path / "fake.parquet").write_text("not parquet")
    return tmp_path / "fake.parquet", "is not a readable parquet file"


@pytest.mark.parametrize("kind", ["parquet", "datasets_parquet", "save_to_disk", "empty_folder", "not_parquet"])
def test_empty_or_fake_dataset_is_one_line(tmp_path, kind):
    path, message = _layout(tmp_path, kind)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_splits(DataConfig(dataset=str(path), val_samples=1), seed=0)


def test_empty_dataset_through_the_command_line(store, capsys):
    path, message = _layout(store, "parquet")
    assert run.main([*TINY, "--dataset", str(path), "--output_dir", str(store / "runs")]) == 2
    assert message in _error(capsys)


def test_all_rows_unreadable_stops_with_one_line(store, capsys):
    import datasets

    rows = [{"images": [{"bytes": b"not an image", "path": None}], "texts": [{"user": "q?", "assistant": "a"}]}] * 12
    datasets.Dataset.from_list(rows).to_parquet(str(store / "bad.parquet"))
    assert run.main([*TINY, "--dataset", str(store / "bad.parquet"), "--output_dir", str(store / "runs")]) == 2
    assert "samples were unreadable or longer than max_length" in _error(capsys)


# ----------------------------------------------------------------------------- faults during a run


def _safetensor_error():
    from safetensors.torch import load

    try:
        load(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    except Exception as e:  # noqa: BLE001 - the real exception type of a truncated file
        return e
    raise AssertionError("safetensors read a truncated file")


def _faults():
    from nanovlm.model.vlm import IncompatibleCheckpoint
    from nanovlm.train import NonFiniteLoss, TooManySkipped

    return [
        (TooManySkipped("30 of 200 samples were unreadable"), "error: 30 of 200 samples were unreadable"),
        (NonFiniteLoss("the training loss became NaN/inf at step(s) [3]"), "became NaN/inf at step(s) [3]"),
        (IncompatibleCheckpoint("checkpoint x has a different\narchitecture"), "has a different architecture"),
        (OSError(errno.ENOSPC, "No space left on device", "runs/x/checkpoints"),
         "no space left on the device: runs/x/checkpoints; free some space"),
        (PermissionError(errno.EACCES, "Permission denied", "runs/x"), "permission denied: runs/x; make it writable"),
        (OSError(errno.EROFS, "Read-only file system", "runs"), "the file system is read-only: runs"),
        (_safetensor_error(), "a checkpoint's .safetensors file is unreadable"),
    ]


@pytest.mark.parametrize("index", range(7))
def test_faults_in_a_run_are_one_line(home, capsys, monkeypatch, index):
    import experiments.runner

    error, message = _faults()[index]

    def fail(cfg, **kwargs):
        raise error

    monkeypatch.setattr(experiments.runner, "run_experiment", fail)
    assert run.main(TINY) == 2
    assert message in _error(capsys)
    with pytest.raises(type(error)):  # --debug: the traceback
        run.main([*TINY, "--debug"])


def test_a_bug_keeps_its_traceback(home, monkeypatch):
    import experiments.runner

    def fail(cfg, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(experiments.runner, "run_experiment", fail)
    with pytest.raises(KeyError):
        run.main(TINY)


def test_garbage_mlflow_db_is_one_line(home, capsys):
    (home / "mlflow.db").write_text("garbage")
    assert run.main([*TINY, "--output_dir", str(home / "runs")]) == 2
    assert "file is not a database" in _error(capsys)


def test_deleted_mlflow_experiment_is_one_line(store, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    client.delete_experiment(client.create_experiment("gone"))
    assert run.main([*TINY, "--experiment", "gone", "--output_dir", str(store / "runs")]) == 2
    assert "MLflow experiment 'gone' is deleted" in _error(capsys)


# ----------------------------------------------------------------------------- the skip rule


def test_skip_fraction_is_judged_on_enough_samples():
    assert not too_many_skipped(1, 16, 0.1)  # one corrupt row in the first batch: not yet a verdict
    assert not too_many_skipped(150, 150, 0.1)  # under 200 seen
    assert too_many_skipped(200, 200, 0.1)  # all unreadable: stops after 200
    assert not too_many_skipped(20, 200, 0.1) and too_many_skipped(21, 200, 0.1)
    assert not too_many_skipped(30, 1000, 0.01)  # 0.01 is judged from 2000 samples
    assert too_many_skipped(21, 2000, 0.01) and not too_many_skipped(20, 2000, 0.01)
    assert too_many_skipped(1, 1, 0.0)  # no tolerance asked for
    assert not too_many_skipped(10_000, 10_000, 1.0)


# ----------------------------------------------------------------------------- bad rows are skipped, not fatal


def _png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return buf.getvalue()


def _row(**changes):
    return {"images": [{"bytes": _png(), "path": None}], "texts": [{"user": "what colour?", "assistant": "red"}],
            **changes}


@pytest.fixture(scope="module")
def processor():
    return SampleProcessor.for_model(tiny_vlm(), 336)


BAD_ROWS = {
    "images_null": _row(images=None),
    "image_null": _row(images=[None]),
    "images_empty": _row(images=[]),
    "image_garbage": _row(images=[{"bytes": b"\x89PNG garbage", "path": None}]),
    "image_truncated": _row(images=[{"bytes": _png()[:40], "path": None}]),
    "image_missing_file": _row(images=[{"bytes": None, "path": "/nonexistent/x.png"}]),
    "texts_null": _row(texts=None),
    "texts_empty": _row(texts=[]),
    "assistant_null": _row(texts=[{"user": "q?", "assistant": None}]),
    "user_missing": _row(texts=[{"assistant": "a"}]),
    "text_bytes": _row(texts=[{"user": b"what colour?", "assistant": "red"}]),
    "turn_not_a_dict": _row(texts=["what colour?"]),
    "record_not_a_dict": None,
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_bad_row_is_skipped(processor, name):
    assert processor(BAD_ROWS[name]) is None


def test_decompression_bomb_is_skipped(processor, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 8x8 = 64 pixels: over twice the limit is an error
    assert processor(_row()) is None


def test_user_text_cannot_create_or_remove_image_slots(processor):
    model = tiny_vlm()
    for text in ("<|image|> what colour?", "what <|image|><|image|> colour?<|image|>"):
        sample = processor(_row(texts=[{"user": text, "assistant": "red <|image|>"}]))
        assert sample is not None
        assert int((sample["input_ids"] == model.image_token_id).sum()) == model.arch.image_tokens
        assert "<|image|>" not in model.tokenizer.decode(sample["input_ids"][sample["labels"] != -100])


def test_slot_count_mismatch_is_skipped(processor, monkeypatch):
    import nanovlm.data.datasets as datasets_module

    monkeypatch.setattr(datasets_module, "clean_turns", lambda turns, token: turns)  # as if the text were not neutralised
    assert processor(_row(texts=[{"user": "<|image|>q", "assistant": "a"}])) is None


# ----------------------------------------------------------------------------- sweeps


def test_sweep_stops_on_a_user_error_and_marks_the_trial(store, capsys, monkeypatch):
    import optuna

    from nanovlm.train import TooManySkipped
    from sweeps import lr
    from sweeps import objective as engine

    def fail(cfg, **kwargs):
        raise TooManySkipped("200 of 200 samples were unreadable")

    monkeypatch.setattr(engine, "run_experiment", fail)
    storage = f"sqlite:///{store}/optuna.db"
    assert lr.main(["--preset", "tiny", "--n_trials", "3", "--study_name", "bad", "--storage", storage,
                    "--tracking_uri", f"sqlite:///{store}/mlflow.db", "--max_steps", "2"]) == 2
    assert _error(capsys) == "error: 200 of 200 samples were unreadable"
    trials = optuna.load_study(study_name="bad", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL"]  # stopped: every trial would fail the same way
    assert trials[0].user_attrs["fail_reason"] == "200 of 200 samples were unreadable"


def test_sweep_plan_checks_the_config(store, capsys):
    from sweeps import lr

    assert lr.main(["--preset", "tiny", "--dry_run", "--batch_size", "0"]) == 2
    assert "train.batch_size=0: must be at least 1" in _error(capsys)
