"""reports: a tiny profile into MLflow, the size table from a store, parameter totals against the source,
the profiler timing `nanovlm.step.train_step` on packed rows, and the FLOPs formula.

    python -m pytest -q tests/test_reports.py

One sqlite store for the module (creating MLflow's schema takes seconds): the `tiny` preset is
profiled into it once, the way a user would (`reports.profile.main`, a fresh worker process per
row), and fake training/evaluation runs are logged beside it for the table tests.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from experiments.presets import get_preset
from nanovlm import metrics as metric_names
from reports import names as report_names
from reports import profile, size_table
from nanovlm.flops import model_flops, peak_tflops
from reports.param_counts import count_parameters
from reports.rows import collect_rows, select_evals
from reports.runs import load_runs
from reports.table import build_table

SEQ_LEN = 40  # tiny: 16 image tokens + 24 text tokens
# Packed: rows of 160 tokens holding 4 samples of 40 tokens each (one image per sample).
PACKED = {"seq_len": 160, "sample_len": 40, "batch_size": 2}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('reports')}/mlflow.db"
    rc = profile.main(["--presets", "tiny", "--seq_len", str(SEQ_LEN), "--steps", "2", "--warmup", "1",
                       "--device", "cpu", "--tracking_uri", uri])
    assert rc == 0
    return uri


@pytest.fixture(scope="module")
def client(store):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store)


@pytest.fixture(scope="module")
def profile_run(client):
    experiment = client.get_experiment_by_name(report_names.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def _fake_run(uri: str, experiment: str, tags: dict, metrics: dict) -> str:
    from nanovlm.tracking import MLflowTracker

    with MLflowTracker.start(experiment, "fake", tags=tags, tracking_uri=uri, system_metrics=False) as tracker:
        tracker.log_metrics(metrics, step=10)
    return tracker.run_id


# ----------------------------------------------------------------------------- profile


def test_profile_logs_a_run_with_measurements_and_provenance(profile_run):
    run = profile_run
    assert run.info.status == "FINISHED"
    m, tags, params = run.data.metrics, run.data.tags, run.data.params
    counts = count_parameters(get_preset("tiny"))
    for part in report_names.PARAM_PARTS:
        assert m[report_names.param_metric(part)] == counts[part]
    assert m["train/samples_per_s"] > 0
    assert m["train/tokens_per_s"] == pytest.approx(m["train/samples_per_s"] * SEQ_LEN)
    assert m["train/samples_per_s"] == pytest.approx(1 / m[report_names.STEP_TIME_S])
    assert m[report_names.STEP_PEAK_MEMORY_MB] > 50  # a whole Python + torch process
    assert metric_names.PEAK_MEMORY_MB not in m  # the training loop's process-lifetime peak is another quantity
    assert m[report_names.SAMPLES_PER_ROW] == 1 and m[metric_names.PADDING_FRACTION] == 0
    assert m[report_names.IMAGE_TOKENS] == 16 and m[report_names.VISION_TOKENS] == 64  # 64 px, 8x8 patches of 8 px
    assert m[report_names.MODEL_FLOPS_PER_STEP] > 0 and m[report_names.ACHIEVED_TFLOPS] > 0 and m[report_names.WALL_S] > 0
    assert report_names.MFU not in m and "CUDA" in tags[report_names.MFU_NOTE_TAG]  # CPU: no peak to compare with
    assert tags["preset"] == "tiny" and tags[profile.RUN_KIND_TAG] == profile.PROFILE_KIND
    assert tags["device"].startswith("cpu (")
    assert tags["compiled"] == "false" and tags["loss_kernel"] == "chunked"  # the CPU step's defaults
    assert tags[report_names.PEAK_MEMORY_MEASURE_TAG] in ("cpu_step_peak_rss", "cpu_process_peak_rss")
    for key in ("git_sha", "torch", "transformers", "mlflow", "python", "vision_encoder", "language_model",
                "flops_formula"):
        assert tags[key], key
    assert params["profile.seq_len"] == str(SEQ_LEN) and params["profile.batch_size"] == "1"
    assert params["profile.packed"] == "False" and params["profile.sample_len"] == str(SEQ_LEN)
    assert params["profile.isolated"] == "True" and params["model.tiny"] == "True"


def test_a_failing_row_ends_failed_with_its_reason_parameter_counts_and_a_footnote(store, client):
    # 10 tokens cannot hold tiny's 16 image tokens: the measurement raises, the run records why.
    rc = profile.main(["--presets", "tiny", "--seq_len", "10", "--steps", "1", "--warmup", "0", "--device", "cpu",
                       "--tracking_uri", store, "--experiment", "profile_failures", "--in_process"])
    assert rc == 1
    (run,) = client.search_runs([client.get_experiment_by_name("profile_failures").experiment_id])
    assert run.info.status == "FAILED"
    assert "seq_len 10" in run.data.tags[report_names.ERROR_TAG]
    assert run.data.metrics[report_names.param_metric("total")] == count_parameters(get_preset("tiny"))["total"]

    # The table shows the failure as the empty cell's footnote.
    frame, missing = load_runs(["profile_failures"], store)
    assert not missing
    md = build_table(frame).markdown
    tiny = _cells(md, "tiny")
    assert tiny["Total Params"] == "0.21M"  # counted before the measurement failed
    note = _footnote(md, tiny["Training speed (samples/s)"])
    assert "failed" in note and "seq_len 10" in note


def test_profile_rejects_unknown_presets_before_running_anything(capsys):
    assert profile.main(["--presets", "tiny,nope", "--device", "cpu", "--tracking_uri", "sqlite:///:memory:"]) == 2
    assert "nope" in capsys.readouterr().err


def test_an_unwritable_trace_dir_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        profile.parse_args(["--device", "cpu", "--trace_dir", str(tmp_path / "file" / "traces")])
    assert exit_.value.code == 2 and "--trace_dir" in capsys.readouterr().err.splitlines()[-1]


def test_cuda_without_a_gpu_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        profile.parse_args(["--device", "cuda"])
    assert exit_.value.code == 2 and "--device cuda: this machine has no CUDA device" in capsys.readouterr().err


def test_packed_flags_and_their_defaults():
    a = profile.parse_args(["--packed", "--device", "cpu"])
    assert (a.seq_len, a.sample_len) == (2048, 256)  # 8 samples per row
    a = profile.parse_args(["--device", "cpu"])
    assert (a.packed, a.seq_len) == (False, 128)
    for bad in (["--sample_len", "64"], ["--packed", "--seq_len", "128", "--sample_len", "256"]):
        with pytest.raises(SystemExit):
            profile.parse_args(bad + ["--device", "cpu"])
    from reports.batches import DEFAULT_SAMPLE_LEN

    assert profile.DEFAULT_SAMPLE_LEN == DEFAULT_SAMPLE_LEN


def test_synthetic_batch_is_collated_like_training_and_packs_several_samples_per_row():
    from conftest import tiny_vlm

    from nanovlm.data.processors import IGNORE_INDEX
    from reports.batches import synthetic_batch

    model = tiny_vlm()
    batch = synthetic_batch(model, PACKED["batch_size"], PACKED["seq_len"], packed=True,
                            sample_len=PACKED["sample_len"])
    stats = batch["stats"]
    assert stats["samples"] == 8 and stats["images"] == 8 and stats["tokens"] == 2 * 160
    assert stats["sample_lens"] == [40] * 8 and stats["loss_tokens"] == 8 * 24  # every text token has a loss
    for r in range(2):
        assert batch["sequence_ids"][r].tolist() == [j for j in range(4) for _ in range(40)]
        assert batch["position_ids"][r].tolist() == list(range(40)) * 4
        slots = batch["image_slots"][r].view(4, 40)
        assert (slots[:, :16] >= 0).all() and (slots[:, 16:] == -1).all()  # one image block per sample, first
    assert batch["images"].shape == (8, 3, model.arch.transform.size, model.arch.transform.size)
    assert (batch["input_ids"][batch["image_slots"] >= 0] == model.image_token_id).all()
    assert (batch["loss_targets"] != IGNORE_INDEX).sum() == 8 * 24

    single = synthetic_batch(model, 2, SEQ_LEN)
    assert single["stats"]["samples"] == 2 and single["sequence_ids"].max() == 0  # one sample per row, no padding


def test_the_profiler_times_the_training_steps_train_step(monkeypatch):
    import nanovlm.step
    from nanovlm.model.vlm import build_vlm
    from reports.measure import measure

    calls = {"train_step": 0, "prepare": 0}
    real_step, real_prepare = nanovlm.step.train_step, nanovlm.step.prepare

    def counting_step(*args, **kwargs):
        calls["train_step"] += 1
        return real_step(*args, **kwargs)

    def counting_prepare(*args, **kwargs):
        calls["prepare"] += 1
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(nanovlm.step, "train_step", counting_step)
    monkeypatch.setattr(nanovlm.step, "prepare", counting_prepare)
    cfg = get_preset("tiny")
    result = measure(cfg, steps=2, warmup=1, device="cpu", packed=True, **PACKED)
    assert calls == {"train_step": 3, "prepare": 1}  # warm-up + timed steps, each one train_step call
    m = result.metrics
    assert m[report_names.SAMPLES_PER_ROW] == 4
    assert m[metric_names.SAMPLES_PER_S] * m[report_names.STEP_TIME_S] == pytest.approx(8)  # 2 rows x 4 samples per step
    assert m[metric_names.TOKENS_PER_S] == pytest.approx(m[metric_names.SAMPLES_PER_S] * PACKED["sample_len"])
    assert 0 < m[report_names.FORWARD_BACKWARD_S] < m[report_names.STEP_TIME_S] and 0 < m[report_names.OPTIMIZER_S] < m[report_names.STEP_TIME_S]
    assert float(result.tags["final_loss"]) > 0 and "skipped_steps" not in result.tags
    # the FLOPs are the per-sample count of the batch that was timed, less than one 160-token sequence per row
    model = build_vlm(cfg.model, meta=True)
    per_sample = model_flops(model, cfg.train, [40] * 8, loss_tokens=8 * 24).total
    per_row = model_flops(model, cfg.train, [160] * 2, loss_tokens=8 * 24, images=8).total
    assert m[report_names.MODEL_FLOPS_PER_STEP] == pytest.approx(per_sample) and per_sample < per_row


def test_a_packed_profile_logs_its_layout_and_the_table_shows_it(store, client, tmp_path):
    rc = profile.main(["--presets", "tiny", "--packed", "--seq_len", str(PACKED["seq_len"]), "--sample_len",
                       str(PACKED["sample_len"]), "--batch_size", str(PACKED["batch_size"]), "--steps", "1",
                       "--warmup", "1", "--device", "cpu", "--tracking_uri", store, "--experiment", "profile_packed",
                       "--in_process", "--trace_dir", str(tmp_path / "traces"), "--set", "data.dataset=/data/x.parquet"])
    assert rc == 0
    (trace,) = (tmp_path / "traces").iterdir()  # where the step's time went, by operator; a path's slashes are not folders
    assert trace.name == "tiny-cpu-bs2-seq160-packed40-dataset=_data_x.parquet.txt"
    assert trace.read_text().startswith("3 steps: ") and "aten::mm" in trace.read_text()
    (run,) = client.search_runs([client.get_experiment_by_name("profile_packed").experiment_id])
    params, m = run.data.params, run.data.metrics
    assert params["profile.packed"] == "True" and params["profile.sample_len"] == "40"
    assert m[report_names.SAMPLES_PER_ROW] == 4 and m[report_names.STEP_PEAK_MEMORY_MB] > 0 and metric_names.PEAK_MEMORY_MB not in m
    assert "sum over the samples i" in run.data.tags["flops_formula"]
    frame, _ = load_runs(["profile_packed"], store)
    table = build_table(frame)
    tiny = _cells(table.markdown, "tiny")
    assert tiny["Peak memory (BS=1)"].startswith(f"{m[report_names.STEP_PEAK_MEMORY_MB] / 1024:.2f} GiB (2 x 160-token packed rows)")
    assert "each packed with 4 samples of 40 tokens" in _footnote(table.markdown, tiny["Training speed (samples/s)"])
    row = table.frame.iloc[0]
    assert bool(row["packed"]) and row["sample_len"] == 40 and row["step_peak_memory_mb"] == m[report_names.STEP_PEAK_MEMORY_MB]


def test_the_table_reads_the_profiles_step_peak_not_the_training_loops_name(store):
    tags = {"preset": "tiny", profile.RUN_KIND_TAG: profile.PROFILE_KIND, "device": "cpu (x86_64, 2 cores)",
            report_names.PEAK_MEMORY_MEASURE_TAG: "cpu_step_peak_rss"}
    # A profile run that (wrongly) carries both names with different values: the step peak wins.
    _fake_run(store, "profile_names", tags, {report_names.STEP_PEAK_MEMORY_MB: 2048.0, metric_names.PEAK_MEMORY_MB: 9999.0,
                                             metric_names.SAMPLES_PER_S: 1.0})
    frame, _ = load_runs(["profile_names"], store)
    table = build_table(frame)
    assert _cells(table.markdown, "tiny")["Peak memory (BS=1)"].startswith("2.00 GiB")
    assert table.frame.iloc[0]["step_peak_memory_mb"] == 2048.0
    # A profile logged before the rename has only train/peak_memory_mb, which then meant the same step peak.
    _fake_run(store, "profile_old", tags, {metric_names.PEAK_MEMORY_MB: 3072.0, metric_names.SAMPLES_PER_S: 1.0})
    frame, _ = load_runs(["profile_old"], store)
    assert _cells(build_table(frame).markdown, "tiny")["Peak memory (BS=1)"].startswith("3.00 GiB")


# ----------------------------------------------------------------------------- size table


def _cells(markdown: str, preset: str) -> dict[str, str]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == f"`{preset}`":
            return dict(zip(header, cells))
    raise AssertionError(f"no row for {preset}")


def _footnote(markdown: str, cell: str) -> str:
    marker = re.fullmatch(r".*\[\^(\d+)\]", cell).group(1)
    return re.search(rf"^\[\^{marker}\]: (.*)$", markdown, re.M).group(1)


@pytest.fixture(scope="module")
def table(store, profile_run, tmp_path_factory):
    tags = {k: profile_run.data.tags[k] for k in ("vision_encoder", "language_model", "device")}
    total = profile_run.data.metrics[report_names.param_metric("total")]
    trained = _fake_run(store, report_names.TRAINING_EXPERIMENT, {"preset": "tiny", **tags},
                        {report_names.param_metric("total"): total, "eval/mmstar/average": 31.25, "eval/synthetic/overall": 50.0,
                         "train/samples_per_s": 123.0})
    # Same preset, another vision encoder: its score must not land on the tiny row.
    _fake_run(store, report_names.TRAINING_EXPERIMENT, {"preset": "tiny", **tags, "vision_encoder": "/x/tiny-v1/dinov2"},
              {report_names.param_metric("total"): total + 1000, "eval/mmstar/average": 99.0})
    # Trained but never profiled: parameter counts only.
    small = _fake_run(store, report_names.TRAINING_EXPERIMENT,
                      {"preset": "original_small", "vision_encoder": "google/siglip-base-patch16-224",
                       "language_model": "HuggingFaceTB/SmolLM2-135M", "device": "NVIDIA H100 80GB HBM3"},
                      {report_names.param_metric(p): v for p, v in count_parameters(get_preset("original_small")).items()})
    _fake_run(store, report_names.TRAINING_EXPERIMENT, {}, {"eval/mmstar/average": 12.0})  # no preset tag
    # An evaluation alone (no parameter counts, never profiled): still a row, never dropped.
    evaluated = _fake_run(store, report_names.EVAL_EXPERIMENT, {"preset": "dinov3_gemma"},
                          {"eval/mmstar/average": 40.0, "eval/mmstar/failed": 3.0})
    out = tmp_path_factory.mktemp("table")
    assert size_table.main(["--experiments", f"{report_names.EXPERIMENT},{report_names.TRAINING_EXPERIMENT},{report_names.EVAL_EXPERIMENT},absent", "--out", str(out),
                            "--tracking_uri", store]) == 0
    return {"out": out, "markdown": (out / "size_table.md").read_text(), "csv": pd.read_csv(out / "size_table.csv"),
            "trained": trained, "small": small, "evaluated": evaluated, "profile": profile_run.info.run_id}


def test_table_fills_measured_cells_and_joins_evaluation_scores(table):
    md, csv = table["markdown"], table["csv"]
    assert list(csv["preset"]) == ["original_small", "dinov3_gemma", "tiny", "tiny"]  # the source's order first
    tiny = _cells(md, "tiny")
    assert tiny["Total Params"] == "0.21M" and tiny["Image tokens"] == "16"
    assert tiny["MMStar"] == "31.2" and tiny["synthetic/overall"] == "50.0"
    assert "GiB" in tiny["Peak memory (BS=1)"] and "peak resident memory" in _footnote(md, tiny["Peak memory (BS=1)"])
    assert f"{SEQ_LEN} tokens per sample" in _footnote(md, tiny["Training speed (samples/s)"])
    assert "CUDA only" in _footnote(md, tiny["MFU"])
    assert tiny["Device"].startswith("cpu (")
    assert table["profile"][:8] in tiny["Runs"] and table["trained"][:8] in tiny["Runs"]

    row = csv[(csv["preset"] == "tiny") & csv["profile_run_id"].notna()].iloc[0]
    assert row["eval/mmstar/average"] == 31.25 and row["eval_run_ids"] == table["trained"]
    assert row["samples_per_s"] > 0 and row["step_peak_memory_mb"] > 0 and pd.isna(row["mfu"])
    assert row["image_tokens"] == 16 and row["seq_len"] == SEQ_LEN
    # the other-encoder run is a row of its own, with its own score
    other = csv[(csv["preset"] == "tiny") & csv["profile_run_id"].isna()].iloc[0]
    assert other["eval/mmstar/average"] == 99.0 and other["vision_encoder"] == "/x/tiny-v1/dinov2"
    assert "differs from the profiled `tiny`" in other["notes"]


def test_table_leaves_missing_data_empty_with_a_footnote(table):
    md, csv = table["markdown"], table["csv"]
    small = _cells(md, "original_small")
    assert small["Vision Encoder (params)"] == "SigLIP-B/16-224 (85.80M)"
    assert small["Total Params"] == "222.08M" and small["Device"] == "NVIDIA H100 80GB HBM3"
    for column in ("Peak memory (BS=1)", "Training speed (samples/s)", "Tokens/s", "MFU", "Image tokens"):
        assert re.fullmatch(r"\[\^\d+\]", small[column]), column  # empty cell + footnote
        assert "Not profiled" in _footnote(md, small[column])
    assert re.fullmatch(r"\[\^\d+\]", small["MMStar"]) and "No `eval/mmstar/average`" in _footnote(md, small["MMStar"])
    assert "1 run(s) with evaluation metrics but no `preset` tag" in md
    assert "(not found: absent)" in md

    row = csv[csv["preset"] == "original_small"].iloc[0]
    assert row["total_params"] == 222082176 and row["params_run_id"] == table["small"]
    assert pd.isna(row["step_peak_memory_mb"]) and pd.isna(row["samples_per_s"]) and pd.isna(row["eval/mmstar/average"])
    assert "Not profiled" in row["notes"]

    evaluated = _cells(md, "dinov3_gemma")
    assert evaluated["MMStar"] == "40.0" and table["evaluated"][:8] in evaluated["Runs"]
    assert "mmstar/failed" not in md  # a count, not a score: excluded by default
    assert _footnote(md, evaluated["Total Params"]) == "Parameter count not recorded."


def test_table_writes_both_plots(table):
    for name in ("params_vs_mmstar.png", "throughput.png"):
        data = (table["out"] / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name


def test_eval_columns_follow_the_patterns():
    names = ["eval/mmstar/failed", "eval/mme/total", "eval/mmstar/average", "eval/ai2d/accuracy"]
    assert select_evals(names) == ["eval/mmstar/average", "eval/ai2d/accuracy", "eval/mme/total"]
    assert select_evals(names, ("eval/*/accuracy",)) == ["eval/mmstar/average", "eval/ai2d/accuracy"]
    assert select_evals([], ()) == ["eval/mmstar/average"]  # always a column, empty + footnote


def test_eval_experiment_name_matches_the_evaluation_cli():
    mlflow_log = pytest.importorskip("evals.mlflow_log")
    assert report_names.EVAL_EXPERIMENT == mlflow_log.EXPERIMENT


def test_an_empty_store_gives_a_table_that_says_so(tmp_path):
    table = build_table(pd.DataFrame(columns=["run_id", "experiment", "status", "start_time"]))
    assert "run `python -m reports.profile` first" in table.markdown and table.frame.empty


# ----------------------------------------------------------------------------- counting and FLOPs


def test_parameter_totals_agree_with_the_source_document():
    small = count_parameters(get_preset("original_small"))
    assert small["total"] == pytest.approx(222e6, rel=0.005)  # "original_small - 222M Parameters"
    assert small["vision"] == pytest.approx(85.8e6, rel=0.001)  # "SigLIP-B/16-224 (85.8M params)"
    assert small["language"] == pytest.approx(134.6e6, rel=0.001)  # "SmolLM2-135M (134.6M params)"
    assert small["projector"] == pytest.approx(1.8e6, rel=0.02)  # "~1.8M params"
    default = count_parameters(get_preset("default"))
    # The source's table says "~450M", the help text it quotes "460M"; the parts add up to 460.05M.
    assert default["total"] == pytest.approx(460e6, rel=0.001)
    assert default["total"] == pytest.approx(450e6, rel=0.025)
    frozen = count_parameters(profile.resolve_rows("original_small", {"freeze_vision_encoder": "true"})[0][1])
    assert frozen["trainable"] == small["total"] - small["vision"]


def test_flops_formula_follows_freezing():
    from nanovlm.config import override
    from nanovlm.model.vlm import build_vlm

    cfg = get_preset("tiny")
    model = build_vlm(cfg.model, meta=True)
    two = [SEQ_LEN, SEQ_LEN]  # two samples of SEQ_LEN tokens, 24 with a loss each
    full = model_flops(model, cfg.train, two, loss_tokens=48)
    frozen = model_flops(model, override(cfg, {"freeze_vision_encoder": True}).train, two, 48)
    lm_frozen = model_flops(model, override(cfg, {"lr_language": 0.0}).train, two, 48)
    assert frozen.vision * 3 == full.vision and frozen.language == full.language  # forward only
    assert lm_frozen.language * 3 == full.language * 2  # forward + input gradients, no weight gradients
    assert model_flops(model, cfg.train, [SEQ_LEN], 24).total * 2 == full.total  # linear in batch
    # the head runs on loss tokens only: twice the tokens, twice the head
    assert model_flops(model, cfg.train, two, 96).head == 2 * full.head


def test_packed_flops_count_attention_per_sample_not_per_row():
    from nanovlm.model.vlm import build_vlm

    cfg = get_preset("tiny")
    model = build_vlm(cfg.model, meta=True)
    # The same 160 tokens, 96 losses and 4 images: one 160-token sequence vs 4 packed samples of 40.
    row = model_flops(model, cfg.train, [160], loss_tokens=96, images=4)
    packed = model_flops(model, cfg.train, [40] * 4, loss_tokens=96)  # one image per sample by default
    assert (packed.vision, packed.projector, packed.head) == (row.vision, row.projector, row.head)
    lm = model.lm.config
    attention = 3 * 4 * lm.num_hidden_layers * lm.num_attention_heads * lm.head_dim  # k = 3: all trained
    assert row.language - packed.language == attention * (160 ** 2 - 4 * 40 ** 2)
    # the image count is the sample count: 4 samples, 4 images
    assert model_flops(model, cfg.train, [40] * 4, 96).vision == 4 * model_flops(model, cfg.train, [40], 24).vision


def test_peak_flops_of_known_gpus():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.4
    assert peak_tflops("NVIDIA GeForce RTX 3090") is None


@pytest.mark.gpu
def test_cuda_profile_measures_allocated_memory_and_mfu():
    from reports.measure import measure

    result = measure(get_preset("tiny"), seq_len=SEQ_LEN, steps=2, warmup=1, device="cuda")
    assert result.tags[report_names.PEAK_MEMORY_MEASURE_TAG] == "cuda_max_allocated"
    assert result.tags["dtype"] == "bf16 autocast" and result.metrics[report_names.STEP_PEAK_MEMORY_MB] > 0
    if peak_tflops(result.tags["device"]) is None:
        assert "unknown" in result.tags[report_names.MFU_NOTE_TAG]
    else:
        assert 0 < result.metrics[report_names.MFU] < 1


def test_profiles_from_before_packing_group_with_unpacked_ones_of_the_same_setting():
    common = {"experiment": "profile", "status": "FINISHED", "tags.preset": "tiny", "tags.device": "cpu",
              f"tags.{profile.RUN_KIND_TAG}": profile.PROFILE_KIND,
              "params.profile.batch_size": "1", "params.profile.seq_len": "40", "params.profile.grad_accum": "1"}
    layout = lambda packed, sample_len: {"params.profile.packed": packed, "params.profile.sample_len": sample_len}  # noqa: E731
    frame = pd.DataFrame([
        {**common, "run_id": "new", "start_time": 3, **layout("False", "40")},
        {**common, "run_id": "old", "start_time": 2},  # logged neither parameter
        {**common, "run_id": "packed", "start_time": 1, **layout("True", "20")},
    ])
    rows, _, _ = collect_rows(frame)
    assert sorted(row.profile["run_id"] for row in rows) == ["new", "packed"]  # "old" is the same row as "new"


def test_the_loader_benchmark_measures_batches_made_during_steps(capsys):
    from reports import loader

    assert loader.main(["--preset", "tiny", "--num_workers", "0", "--batches", "3", "--step_ms", "20"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "a 20 ms step per batch, prefetched" in line and re.search(r"[1-9]\d* samples/s", line)
    with pytest.raises(SystemExit) as exit_:
        loader.main(["--step_ms", "-1"])
    assert exit_.value.code == 2


def test_loss_kernels_times_every_backend_that_runs_here_after_checking_its_numbers(capsys):
    from reports import loss_kernels

    assert loss_kernels.main(["--rows", "37", "--dim", "8", "--vocab", "50", "--chunk_size", "8", "--repeats", "1"]) == 0
    timed = re.findall(r"^  (\w+) +[\d.]+ ms +[\d,]+ rows/s", capsys.readouterr().out, re.M)
    assert timed == ["plain", "chunked", "compiled"]  # liger: CUDA only
    assert loss_kernels.backends_for(torch.device("cpu"), 1 << 20, 1 << 12) == ["chunked", "compiled"]  # 16 GiB logits


def test_loss_kernels_refuses_bad_sizes_in_one_line(capsys):
    from reports import loss_kernels

    assert loss_kernels.main(["--rows", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --rows")
