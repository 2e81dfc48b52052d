"""The size table's markdown (with footnotes) and CSV frame, from the rows of `reports.rows`.

    table = build_table(frame, source_note="From ...")   # frame: reports.runs.load_runs
    table.markdown, table.frame                           # the .md and the .csv's content

Cells are measured or empty, never estimated: every empty cell has a footnote that says why (not
profiled, profile failed and its error, no score logged, MFU only on CUDA, ...). Peak memory is that
of the profiled steps (`profile/step_peak_memory_mb`; profiles logged before that name existed have
it as `train/peak_memory_mb`); a training run's own `train/peak_memory_mb` (a process-lifetime peak)
is never shown. A score is shown with its standard error, "0.351 ± 0.012", where the run logged
`eval/<task>/<score>_stderr` (lmms-eval's); MMStar's average, for which lmms-eval reports none
(N/A), shows its `_stderr_clt` instead, with a footnote saying so. The CSV has a `<metric>_stderr`
column beside each score (and MMStar's `_stderr_clt`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from nanovlm import metrics as metric_names
from reports import names as report_names
from reports.rows import DEFAULT_EVAL_EXCLUDE, DEFAULT_EVALS, MMSTAR, STDERR, STDERR_CLT, Row, collect_rows
from reports.runs import run_value

MMSTAR_CLT_NOTE = ("± for MMStar is lmms-eval's `average_stderr_clt`, the standard error of the mean of the item "
                   "scores: lmms-eval reports no `average_stderr` (N/A) for MMStar's mean of sub-axis means.")

# Display names of the backbones the project knows; anything else shows its id or folder name.
DISPLAY_NAMES = {
    "google/siglip-base-patch16-224": "SigLIP-B/16-224",
    "google/siglip2-base-patch16-512": "SigLIP2-B/16-512",
    "facebook/dinov2-small": "DINOv2-S/14",
    "facebook/dinov3-vits16-pretrain-lvd1689m": "DINOv3-S/16",
    "facebook/dinov3-vits16plus-pretrain-lvd1689m": "DINOv3-S/16+",
    "facebook/dinov3-vitb16-pretrain-lvd1689m": "DINOv3-B/16",
    "facebook/dinov3-vitl16-pretrain-lvd1689m": "DINOv3-L/16",
    "HuggingFaceTB/SmolLM2-135M": "SmolLM2-135M",
    "HuggingFaceTB/SmolLM2-360M-Instruct": "SmolLM2-360M-Instruct",
    "google/gemma-3-270m-it": "Gemma-3-270M-it",
}

# Columns of the CSV, in order: these, then one per evaluation metric, then TAIL_COLUMNS.
BASE_COLUMNS = ["preset", "vision_encoder", "vision_params", "language_model", "language_params", "projector_params",
                "total_params", "trainable_params", "image_tokens", "step_peak_memory_mb", "peak_memory_measure",
                "samples_per_s", "tokens_per_s", "mfu", "batch_size", "seq_len", "packed", "sample_len"]
TAIL_COLUMNS = ["device", "profile_run_id", "eval_run_ids", "params_run_id", "notes"]


def display_name(source: Any) -> str:
    if not isinstance(source, str) or not source:
        return ""
    if source in DISPLAY_NAMES:
        return DISPLAY_NAMES[source]
    if source.startswith(("/", ".")):  # a local folder (tiny stand-ins): its last two parts
        return "/".join(Path(source).parts[-2:])
    return source


class Footnotes:
    """Numbered markdown footnotes, one per distinct text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[^{self.texts.index(text) + 1}]"

    def render(self) -> str:
        return "\n".join(f"[^{i}]: {text}" for i, text in enumerate(self.texts, 1))


def _millions(n: Any) -> str:
    return f"{n / 1e6:.2f}M"


def significant(x: float, digits: int = 3) -> str:
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{decimals}f}"


def _with_stderr(value: float, stderr: float | None) -> str:
    """"31.2" alone, or "0.351 ± 0.012": decimals to the standard error's second significant digit."""
    if stderr is None or not math.isfinite(stderr):
        return f"{value:.1f}"
    decimals = 1 if stderr <= 0 else min(6, max(1, 1 - int(math.floor(math.log10(stderr)))))
    return f"{value:.{decimals}f} ± {stderr:.{decimals}f}"


def _short(run_id: Any) -> str:
    return f"`{str(run_id)[:8]}`"


def _packed(run: pd.Series | None) -> bool:
    return str(run_value(run, "params.profile.packed")) == "True"


def _settings_note(run: pd.Series) -> str:
    p = lambda k: run_value(run, f"params.profile.{k}")  # noqa: E731
    dtype = run_value(run, "tags.dtype") or ""
    if _packed(run):
        per_row = int(p("seq_len")) // int(p("sample_len"))
        layout = (f"batch {p('batch_size')} rows of {p('seq_len')} tokens, each packed with {per_row} samples of "
                  f"{p('sample_len')} tokens (one image each, the image's tokens included, a loss on every text "
                  f"token, attention within each sample)")
    else:
        layout = (f"batch {p('batch_size')}, {p('seq_len')} tokens per sample (the image's tokens included, a loss "
                  f"on every text token)")
    return (f"Training throughput: {layout}, {dtype}; median of {p('steps')} optimizer steps of "
            f"{p('grad_accum')} micro-step(s) each (`nanovlm.step.train_step`: forward, backward, clipping, AdamW) "
            f"after {p('warmup')} warm-up step(s), random weights at real size (`python -m reports.profile`).")


@dataclass
class Table:
    markdown: str
    frame: pd.DataFrame  # the CSV's content
    rows: list[Row]
    eval_metrics: list[str]


HEADER = ["Preset/Config", "Vision Encoder (params)", "Language Model (params)", "Projector", "Total Params",
          "Trainable", "Image tokens", "Peak memory (BS=1)", "Training speed (samples/s)", "Tokens/s", "MFU"]


def _why_unmeasured(row: Row, rows: list[Row]) -> str | None:
    """Why the row has no measurements (None when it has a finished profile)."""
    if row.profile is not None:
        return None
    if row.failed is not None:
        error = run_value(row.failed, "tags." + report_names.ERROR_TAG) or "no error recorded"
        return f"The profile of `{row.preset}` on {row.device or 'this device'} failed (run {_short(row.failed['run_id'])}): {error}"
    if any(other.preset == row.preset and other.profile is not None for other in rows):
        why = (f"Not profiled: this architecture differs from the profiled `{row.preset}` (other backbones or "
               f"parameter total; `python -m reports.profile --presets {row.preset} --set field=value` profiles it).")
    else:
        why = (f"Not profiled: no finished profile run of `{row.preset}` in the experiments read "
               f"(`python -m reports.profile --presets {row.preset}`).")
    if run_value(row.params_run, "metrics." + report_names.param_metric("total")) is not None:
        why += f" Parameter counts from run {_short(row.params_run['run_id'])}."
    return why


def _format_row(row: Row, rows: list[Row], eval_metrics: list[str], notes: Footnotes) -> tuple[list[str], dict[str, Any]]:
    """The markdown cells and the CSV record of one row; every empty cell gets a footnote."""
    run, row_notes = row.source, []
    profiled = row.profile is not None
    unmeasured = _why_unmeasured(row, rows)

    def note(text: str) -> str:
        row_notes.append(text)
        return notes.mark(text)

    def cell(value: Any, text: str, why: str | None = None) -> str:
        return note(why or unmeasured or "Not recorded by this run.") if value is None else text

    def metric(key: str) -> Any:
        return run_value(run, "metrics." + key)

    record: dict[str, Any] = {c: None for c in BASE_COLUMNS}
    record.update(preset=row.preset, vision_encoder=run_value(run, "tags.vision_encoder"),
                  language_model=run_value(run, "tags.language_model"))
    record.update({f"{part}_params": metric(report_names.param_metric(part)) for part in report_names.PARAM_PARTS})
    if row.profile is not None or row.failed is not None:
        record["batch_size"] = run_value(run, "params.profile.batch_size")
        record["seq_len"] = run_value(run, "params.profile.seq_len")
        record["packed"] = _packed(run)
        record["sample_len"] = run_value(run, "params.profile.sample_len") or record["seq_len"]
    if profiled:
        # The peak of the profiled steps; older profiles logged that figure as train/peak_memory_mb.
        step_peak = metric(report_names.STEP_PEAK_MEMORY_MB)
        record.update(peak_memory_measure=run_value(run, "tags." + report_names.PEAK_MEMORY_MEASURE_TAG),
                      step_peak_memory_mb=step_peak if step_peak is not None else metric(metric_names.PEAK_MEMORY_MB),
                      samples_per_s=metric(metric_names.SAMPLES_PER_S),
                      tokens_per_s=metric(metric_names.TOKENS_PER_S), mfu=metric(report_names.MFU))
    record["image_tokens"] = metric(report_names.IMAGE_TOKENS)
    uncounted = "Parameter count not recorded."

    cells = [f"`{row.preset}`"]
    for part, source in (("vision", "vision_encoder"), ("language", "language_model")):
        count = record[f"{part}_params"]
        name = display_name(record[source])
        cells.append(f"{name} ({_millions(count)})" if count is not None else f"{name} {note(uncounted)}")
    for part in ("projector", "total", "trainable"):
        count = record[f"{part}_params"]
        cells.append(cell(count, _millions(count) if count is not None else "", uncounted))
    tokens = record["image_tokens"]
    cells.append(cell(tokens, f"{tokens:.0f}" if tokens is not None else ""))

    memory = record["step_peak_memory_mb"]
    if memory is not None:
        measure = report_names.PEAK_MEMORY_MEASURES.get(record["peak_memory_measure"] or "", "measure not recorded.")
        if record["packed"]:
            batch = f" ({record['batch_size']} x {record['seq_len']}-token packed rows)"
        else:
            batch = "" if str(record["batch_size"]) == "1" else f" (batch {record['batch_size']})"
        cells.append(f"{memory / 1024:.2f} GiB{batch} {note('Peak memory: ' + measure)}")
    else:
        cells.append(cell(None, ""))
    speed, token_speed = record["samples_per_s"], record["tokens_per_s"]
    cells.append(f"{significant(speed)} {note(_settings_note(run))}" if speed is not None else cell(None, ""))
    cells.append(cell(token_speed, significant(token_speed) if token_speed is not None else ""))
    if record["mfu"] is not None:
        peak, formula = run_value(run, "tags.peak_tflops"), run_value(run, "tags.flops_formula") or ""
        mfu_note = note(f"MFU against a peak of {peak} TFLOPS; {formula}")
        cells.append(f"{significant(100 * record['mfu'], 2)}% {mfu_note}")
    else:
        why = (run_value(run, "tags." + report_names.MFU_NOTE_TAG) or "MFU not recorded.") if profiled else None
        cells.append(cell(None, "", why))

    for name in eval_metrics:
        source = row.evals.get(name)
        value = run_value(source, "metrics." + name)
        stderr = run_value(source, "metrics." + name + STDERR)  # from the run that logged the score
        record[name], record[name + STDERR] = value, stderr
        missing = f"No `{name}` logged by any run of this architecture in the experiments read."
        text = _with_stderr(value, stderr) if value is not None else ""
        if name == MMSTAR:
            clt = run_value(source, "metrics." + name + STDERR_CLT)
            record[name + STDERR_CLT] = clt
            if value is not None and stderr is None and clt is not None:
                text = f"{_with_stderr(value, clt)} {note(MMSTAR_CLT_NOTE)}"
        cells.append(cell(value, text, missing))

    eval_ids = list(dict.fromkeys(r["run_id"] for r in row.evals.values()))
    profile_run = row.profile if profiled else row.failed
    record.update(device=row.device, profile_run_id=run_value(profile_run, "run_id"),
                  eval_run_ids=";".join(eval_ids) or None, params_run_id=run_value(row.params_run, "run_id"))
    cells.append(row.device or note("Device not recorded."))
    runs = []
    if profile_run is not None:
        runs.append(("profile " if profiled else "failed profile ") + _short(profile_run["run_id"]))
    if row.params_run is not None:
        runs.append("run " + _short(row.params_run["run_id"]))
    cells.append("; ".join(runs + ["eval " + _short(i) for i in eval_ids]))
    record["notes"] = " | ".join(dict.fromkeys(row_notes)) or None
    return [c.strip() for c in cells], record


def build_table(frame: pd.DataFrame, source_note: str = "", include: tuple[str, ...] = DEFAULT_EVALS,
                exclude: tuple[str, ...] = DEFAULT_EVAL_EXCLUDE) -> Table:
    """The markdown table (with footnotes) and the CSV frame from a frame of runs (`load_runs`)."""
    rows, eval_metrics, untagged = collect_rows(frame, include, exclude)
    notes = Footnotes()
    header = HEADER + [("MMStar" if m == MMSTAR else m[len("eval/"):]) for m in eval_metrics] + ["Device", "Runs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    records = []
    for row in rows:
        cells, record = _format_row(row, rows, eval_metrics, notes)
        lines.append("| " + " | ".join(cells) + " |")
        records.append(record)
    if not rows:
        empty = notes.mark("No profile or training runs with a preset tag in the experiments read; run "
                           "`python -m reports.profile` first.")
        lines.append("| " + " | ".join([empty] + [""] * (len(header) - 1)) + " |")
    # Remarks that belong to no cell are text: a footnote that nothing refers to is not rendered.
    remarks = [source_note] if source_note else []
    if untagged:
        remarks.append(f"{untagged} run(s) with evaluation metrics but no `preset` tag were not attributed to a row.")
    parts = ["## Model size comparison (measured)", ""] + [f"{r}  " for r in remarks] + ([""] if remarks else [])
    parts += lines + ["", notes.render(), ""]
    score_columns = [c for m in eval_metrics for c in [m, m + STDERR] + ([m + STDERR_CLT] if m == MMSTAR else [])]
    csv = pd.DataFrame.from_records(records, columns=BASE_COLUMNS + score_columns + TAIL_COLUMNS)
    counts = [f"{part}_params" for part in report_names.PARAM_PARTS] + ["image_tokens", "batch_size", "seq_len", "sample_len"]
    for column in counts:
        csv[column] = pd.to_numeric(csv[column]).round().astype("Int64")  # counts: integers, empty when missing
    return Table("\n".join(parts), csv, rows, eval_metrics)
