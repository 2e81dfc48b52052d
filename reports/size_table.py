"""The "Model Size Comparison" table, filled from MLflow: profiles, training runs, evaluation scores.

    python -m reports.profile                       # measure the rows first (experiment "profile")
    python -m reports.size_table                    # -> runs/size_table/size_table.md, .csv, two PNGs
    python -m reports.size_table --experiments profile,nanovlm,evals --out docs/size --tracking_uri sqlite:///$PWD/mlflow.db

Reads every run of `--experiments` into a pandas frame and builds one row per profiled
architecture, device and profile setting (batch size, sequence length, accumulation, packed
sample length):
- parameters, image tokens, peak memory of the profiled steps (`profile/step_peak_memory_mb`;
  profiles logged before that name existed have it as `train/peak_memory_mb`) and training
  throughput come from the newest FINISHED profile run (`reports.profile`) of that preset, device
  and setting; a training run's own `train/peak_memory_mb` (a process-lifetime peak) is never
  shown in the table;
- evaluation scores (`eval/<task>/<score>` matching `--evals`; MMStar's `eval/mmstar/average`
  always has a column) come from the newest run of the same architecture that logged them (the
  evaluation CLI logs to the training run of the checkpoint, else to `nanovlm-evals`): same preset tag,
  and the same backbones and parameter total where the run records them, so a training run with
  `--vision_encoder` swapped does not lend its score to the preset's row;
- an architecture that was trained or evaluated but never profiled gets a row of its own, with the
  parameter counts its run logged, if any.
- a score is shown with its standard error, "0.351 ± 0.012", where the run logged
  `eval/<task>/<score>_stderr` (lmms-eval's); MMStar's average, for which lmms-eval reports none
  (N/A), shows its `_stderr_clt` instead, with a footnote saying so; the MMStar plot draws them as
  error bars; the CSV has a `<metric>_stderr` column beside each score (and MMStar's `_stderr_clt`).
Every empty cell has a footnote that says why (not profiled, profile failed and its error, no
score logged, MFU only on CUDA, ...): a cell is measured or empty, never estimated.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nanovlm import metrics as M
from reports import names as N
from reports.profile import DEFAULT_ROWS, PROFILE_KIND, RUN_KIND_TAG

MMSTAR = M.eval_name("mmstar", "average")
STDERR, STDERR_CLT = "_stderr", "_stderr_clt"  # suffixes of a score's standard errors (evals/mlflow_log.py)
MMSTAR_CLT_NOTE = ("± for MMStar is lmms-eval's `average_stderr_clt`, the standard error of the mean of the item "
                   "scores: lmms-eval reports no `average_stderr` (N/A) for MMStar's mean of sub-axis means.")
DEFAULT_EXPERIMENTS = (N.EXPERIMENT, N.TRAINING_EXPERIMENT, N.EVAL_EXPERIMENT)
DEFAULT_EVALS = ("eval/*",)
# `failed` is a count of items without a usable answer, not a score; standard errors go beside their scores.
DEFAULT_EVAL_EXCLUDE = ("eval/*/failed", f"eval/*/*{STDERR}", f"eval/*/*{STDERR_CLT}")

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


# ----------------------------------------------------------------------------- reading MLflow


def load_runs(experiments: list[str], tracking_uri: str) -> tuple[pd.DataFrame, list[str]]:
    """All active runs of `experiments` as one frame: run_id, experiment, status, start_time,
    run_name, and `tags.*`, `params.*`, `metrics.*` columns (latest metric values). Also returns
    the experiments that were not found."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    records, missing = [], []
    for name in experiments:
        experiment = client.get_experiment_by_name(name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            missing.append(name)
            continue
        token = None
        while True:
            page = client.search_runs([experiment.experiment_id], page_token=token, max_results=1000)
            for run in page:
                record = {"run_id": run.info.run_id, "experiment": name, "status": run.info.status,
                          "start_time": run.info.start_time or 0, "run_name": run.info.run_name}
                record.update({f"tags.{k}": v for k, v in run.data.tags.items()})
                record.update({f"params.{k}": v for k, v in run.data.params.items()})
                record.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
                records.append(record)
            token = page.token
            if not token:
                break
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        frame = pd.DataFrame(columns=["run_id", "experiment", "status", "start_time", "run_name"])
    return frame.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True), missing


# ----------------------------------------------------------------------------- footnotes


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


# ----------------------------------------------------------------------------- rows


def _value(run: pd.Series | None, column: str) -> Any:
    if run is None or column not in run.index:
        return None
    value = run[column]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _is_profile(frame: pd.DataFrame) -> pd.Series:
    column = f"tags.{RUN_KIND_TAG}"
    return frame[column].eq(PROFILE_KIND) if column in frame else pd.Series(False, index=frame.index)


@dataclass
class Row:
    preset: str
    device: str = ""
    profile: pd.Series | None = None  # the newest finished profile run
    failed: pd.Series | None = None  # the newest failed profile run, when no finished one
    params_run: pd.Series | None = None  # the newest training/eval run of an architecture never profiled
    evals: dict[str, pd.Series] = field(default_factory=dict)  # metric -> run that logged it

    @property
    def source(self) -> pd.Series | None:
        return self.profile if self.profile is not None else (self.failed if self.failed is not None else self.params_run)

    def signature(self) -> dict[str, Any]:
        run = self.source
        return {"tags.vision_encoder": _value(run, "tags.vision_encoder"),
                "tags.language_model": _value(run, "tags.language_model"),
                "metrics.params/total": _value(run, "metrics." + N.param_metric("total"))}


def _same_architecture(row: Row, run: pd.Series) -> bool:
    """Same preset, and the same backbones and parameter total wherever both record them."""
    if _value(run, "tags.preset") != row.preset:
        return False
    return all(mine is None or _value(run, k) is None or _value(run, k) == mine for k, mine in row.signature().items())


def _batch_size(row: Row) -> int:
    value = _value(row.source, "params.profile.batch_size")
    return int(value) if value is not None else 0


def _row_order(preset: str) -> tuple[int, str]:
    return (DEFAULT_ROWS.index(preset), "") if preset in DEFAULT_ROWS else (len(DEFAULT_ROWS), preset)


def select_evals(names: list[str], include: tuple[str, ...] = DEFAULT_EVALS,
                 exclude: tuple[str, ...] = DEFAULT_EVAL_EXCLUDE) -> list[str]:
    """The evaluation metrics that get a column: MMStar's average always first, then the others
    matching `include` and not `exclude` (shell-style patterns), sorted."""
    chosen = sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)
                    and not any(fnmatch.fnmatchcase(n, p) for p in exclude) and n != MMSTAR)
    return [MMSTAR] + chosen


def collect_rows(frame: pd.DataFrame, include: tuple[str, ...] = DEFAULT_EVALS,
                 exclude: tuple[str, ...] = DEFAULT_EVAL_EXCLUDE) -> tuple[list[Row], list[str], int]:
    """Rows, the eval metric columns (MMStar first), and how many runs with scores had no preset tag."""
    if frame.empty:
        return [], [MMSTAR], 0
    has_preset = frame["tags.preset"].notna() if "tags.preset" in frame else pd.Series(False, index=frame.index)
    profiles = frame[_is_profile(frame) & has_preset]
    others = frame[~_is_profile(frame)]
    eval_columns = [c for c in frame.columns if c.startswith("metrics.eval/")]
    eval_metrics = select_evals([c[len("metrics."):] for c in eval_columns], include, exclude)
    has_eval = others[eval_columns].notna().any(axis=1) if eval_columns else pd.Series(False, index=others.index)
    untagged_evals = int((has_eval & ~has_preset.reindex(others.index, fill_value=False)).sum())

    rows: list[Row] = []
    # One row per preset, device and profile settings: the newest finished run, else the newest failure.
    column = lambda c: profiles[c].fillna("") if c in profiles else pd.Series("", index=profiles.index)  # noqa: E731
    settings = [column(c) for c in ("tags.device", "params.profile.batch_size", "params.profile.seq_len",
                                    "params.profile.grad_accum")]
    # Profiles from before packing logged neither: one sample of seq_len tokens per row, not packed.
    settings.append(column("params.profile.packed").replace("", "False"))
    settings.append(column("params.profile.sample_len").mask(lambda v: v == "", settings[2]))
    for (preset, device, *_), runs in profiles.groupby([profiles["tags.preset"], *settings], sort=False):
        finished = runs[runs["status"] == "FINISHED"]
        row = Row(preset, device)
        if len(finished):
            row.profile = finished.iloc[0]
        else:
            row.failed = runs.iloc[0]
        rows.append(row)

    # Evaluation scores from other runs, whatever their status (evaluating a checkpoint of a killed
    # training run logs to that run, which stays KILLED); an architecture never profiled gets a row
    # of its own, with the parameter counts its run logged (finished runs log them at the end).
    usable = (others["status"] == "FINISHED") | has_eval
    for _, run in others[usable & has_preset.reindex(others.index, fill_value=False)].iterrows():  # newest first
        matches = [row for row in rows if _same_architecture(row, run)]
        if not matches:
            row = Row(run["tags.preset"], _value(run, "tags.device") or "", params_run=run)
            rows.append(row)
            matches = [row]
        for row in matches:
            for metric in eval_metrics:
                if metric not in row.evals and _value(run, "metrics." + metric) is not None:
                    row.evals[metric] = run
    # The source's rows first, in its order; within a preset, profiled rows before the others.
    rows.sort(key=lambda r: (*_row_order(r.preset), r.profile is None and r.failed is None, r.device, _batch_size(r)))
    return rows, eval_metrics, untagged_evals


# ----------------------------------------------------------------------------- the table


def _millions(n: Any) -> str:
    return f"{n / 1e6:.2f}M"


def _significant(x: float, digits: int = 3) -> str:
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
    return str(_value(run, "params.profile.packed")) == "True"


def _settings_note(run: pd.Series) -> str:
    p = lambda k: _value(run, f"params.profile.{k}")  # noqa: E731
    dtype = _value(run, "tags.dtype") or ""
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
        error = _value(row.failed, "tags." + N.ERROR_TAG) or "no error recorded"
        return f"The profile of `{row.preset}` on {row.device or 'this device'} failed (run {_short(row.failed['run_id'])}): {error}"
    if any(other.preset == row.preset and other.profile is not None for other in rows):
        why = (f"Not profiled: this architecture differs from the profiled `{row.preset}` (other backbones or "
               f"parameter total; `python -m reports.profile --presets {row.preset} --set field=value` profiles it).")
    else:
        why = (f"Not profiled: no finished profile run of `{row.preset}` in the experiments read "
               f"(`python -m reports.profile --presets {row.preset}`).")
    if _value(row.params_run, "metrics." + N.param_metric("total")) is not None:
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
        return _value(run, "metrics." + key)

    record: dict[str, Any] = {c: None for c in BASE_COLUMNS}
    record.update(preset=row.preset, vision_encoder=_value(run, "tags.vision_encoder"),
                  language_model=_value(run, "tags.language_model"))
    record.update({f"{part}_params": metric(N.param_metric(part)) for part in N.PARAM_PARTS})
    if row.profile is not None or row.failed is not None:
        record["batch_size"] = _value(run, "params.profile.batch_size")
        record["seq_len"] = _value(run, "params.profile.seq_len")
        record["packed"] = _packed(run)
        record["sample_len"] = _value(run, "params.profile.sample_len") or record["seq_len"]
    if profiled:
        # The peak of the profiled steps; older profiles logged that figure as train/peak_memory_mb.
        step_peak = metric(N.STEP_PEAK_MEMORY_MB)
        record.update(peak_memory_measure=_value(run, "tags." + N.PEAK_MEMORY_MEASURE_TAG),
                      step_peak_memory_mb=step_peak if step_peak is not None else metric(M.PEAK_MEMORY_MB),
                      samples_per_s=metric(M.SAMPLES_PER_S),
                      tokens_per_s=metric(M.TOKENS_PER_S), mfu=metric(N.MFU))
    record["image_tokens"] = metric(N.IMAGE_TOKENS)
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
        measure = N.PEAK_MEMORY_MEASURES.get(record["peak_memory_measure"] or "", "measure not recorded.")
        if record["packed"]:
            batch = f" ({record['batch_size']} x {record['seq_len']}-token packed rows)"
        else:
            batch = "" if str(record["batch_size"]) == "1" else f" (batch {record['batch_size']})"
        cells.append(f"{memory / 1024:.2f} GiB{batch} {note('Peak memory: ' + measure)}")
    else:
        cells.append(cell(None, ""))
    speed, token_speed = record["samples_per_s"], record["tokens_per_s"]
    cells.append(f"{_significant(speed)} {note(_settings_note(run))}" if speed is not None else cell(None, ""))
    cells.append(cell(token_speed, _significant(token_speed) if token_speed is not None else ""))
    if record["mfu"] is not None:
        peak, formula = _value(run, "tags.peak_tflops"), _value(run, "tags.flops_formula") or ""
        cells.append(f"{_significant(100 * record['mfu'], 2)}% {note(f'MFU against a peak of {peak} TFLOPS; {formula}')}")
    else:
        cells.append(cell(None, "", (_value(run, "tags." + N.MFU_NOTE_TAG) or "MFU not recorded.") if profiled else None))

    for name in eval_metrics:
        source = row.evals.get(name)
        value = _value(source, "metrics." + name)
        stderr = _value(source, "metrics." + name + STDERR)  # from the run that logged the score
        record[name], record[name + STDERR] = value, stderr
        missing = f"No `{name}` logged by any run of this architecture in the experiments read."
        text = _with_stderr(value, stderr) if value is not None else ""
        if name == MMSTAR:
            clt = _value(source, "metrics." + name + STDERR_CLT)
            record[name + STDERR_CLT] = clt
            if value is not None and stderr is None and clt is not None:
                text = f"{_with_stderr(value, clt)} {note(MMSTAR_CLT_NOTE)}"
        cells.append(cell(value, text, missing))

    eval_ids = list(dict.fromkeys(r["run_id"] for r in row.evals.values()))
    profile_run = row.profile if profiled else row.failed
    record.update(device=row.device, profile_run_id=_value(profile_run, "run_id"), eval_run_ids=";".join(eval_ids) or None,
                  params_run_id=_value(row.params_run, "run_id"))
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
    counts = [f"{part}_params" for part in N.PARAM_PARTS] + ["image_tokens", "batch_size", "seq_len", "sample_len"]
    for column in counts:
        csv[column] = pd.to_numeric(csv[column]).round().astype("Int64")  # counts: integers, empty when missing
    return Table("\n".join(parts), csv, rows, eval_metrics)


# ----------------------------------------------------------------------------- plots


def _label(record: pd.Series) -> str:
    batch = "" if pd.isna(record["batch_size"]) else f", batch {record['batch_size']}"
    if batch and not pd.isna(record["packed"]) and bool(record["packed"]):
        batch += f" x {record['seq_len']} packed"
    return f"{record['preset']}{batch}\n{record['device']}" if record["device"] else f"{record['preset']}{batch}"


def plot_params_vs_mmstar(csv: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    have = csv[csv["total_params"].notna() & csv[MMSTAR].notna()] if MMSTAR in csv else csv.iloc[0:0]
    # One point per architecture: rows of the same preset on two devices have the same score.
    have = have.drop_duplicates(subset=["preset", "total_params", MMSTAR])
    # error bars: lmms-eval's standard error, else (MMStar's average has none) its CLT one
    yerr, used = pd.Series(float("nan"), index=have.index), []
    for column in (MMSTAR + STDERR_CLT, MMSTAR + STDERR):
        values = pd.to_numeric(have[column], errors="coerce") if column in have else yerr * float("nan")
        if values.notna().any():
            used.append(column.rpartition("/")[2])
        yerr = values.where(values.notna(), yerr)
    ax.errorbar(have["total_params"] / 1e6, have[MMSTAR], yerr=yerr.fillna(0.0).to_numpy(), fmt="o",
                color="tab:blue", ecolor="tab:blue", elinewidth=1, capsize=4)
    if used:
        ax.text(0.99, 0.99, f"error bars: ± 1 standard error (lmms-eval's {' / '.join(reversed(used))})",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="gray")
    for _, r in have.iterrows():
        ax.annotate(r["preset"], (r["total_params"] / 1e6, r[MMSTAR]), textcoords="offset points", xytext=(5, 4))
    missing = sorted(set(csv["preset"]) - set(have["preset"]))
    if have.empty:
        ax.text(0.5, 0.5, "no eval/mmstar/average in the store", ha="center", va="center", transform=ax.transAxes)
        # empty axes on the scales the points would have: the rows' parameter range, a 0-100 score
        largest = csv["total_params"].max() / 1e6 if csv["total_params"].notna().any() else 1.0
        ax.set_xlim(0, 1.1 * largest)
        ax.set_ylim(0, 100)
    if missing:
        ax.text(0.01, 0.01, "not plotted (no MMStar score or no parameter count): " + ", ".join(missing),
                transform=ax.transAxes, fontsize=8, color="gray")
    ax.set_xlabel("total parameters (M)")
    ax.set_ylabel("MMStar average")
    ax.set_title("Parameters vs MMStar")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_throughput(csv: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(r) for _, r in csv.iterrows()]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * max(1, len(csv))))
    values = csv["samples_per_s"].astype(float).fillna(0.0).tolist()
    ax.barh(range(len(csv)), values, color="tab:green")
    for i, (_, r) in enumerate(csv.iterrows()):
        if pd.isna(r["samples_per_s"]):
            ax.text(0, i, " not profiled", va="center", color="gray", fontsize=8)
        else:
            ax.text(r["samples_per_s"], i, f" {_significant(r['samples_per_s'])}", va="center", fontsize=8)
    ax.set_yticks(range(len(csv)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("training samples/s (profiled batch and sequence length)")
    ax.set_title("Training throughput per row")
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- command line


def write_outputs(table: Table, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "size_table.md", "csv": out / "size_table.csv",
             "params_vs_mmstar": out / "params_vs_mmstar.png", "throughput": out / "throughput.png"}
    paths["markdown"].write_text(table.markdown)
    table.frame.to_csv(paths["csv"], index=False)
    plot_params_vs_mmstar(table.frame, paths["params_vs_mmstar"])
    plot_throughput(table.frame, paths["throughput"])
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.size_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", default=",".join(DEFAULT_EXPERIMENTS),
                   help="comma-separated MLflow experiments to read (profiles, training runs, evaluations)")
    p.add_argument("--out", default="runs/size_table", help="output folder (runs/ is git-ignored)")
    p.add_argument("--tracking_uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--evals", default=",".join(DEFAULT_EVALS),
                   help="comma-separated patterns of the evaluation metrics to show, e.g. 'eval/mmstar/*,eval/*/accuracy' "
                        "(eval/mmstar/average always has a column)")
    p.add_argument("--exclude_evals", default=",".join(DEFAULT_EVAL_EXCLUDE), help="patterns of metrics not to show")
    a = p.parse_args(argv)
    from nanovlm.tracking import default_tracking_uri

    split = lambda text: tuple(x.strip() for x in text.split(",") if x.strip())  # noqa: E731

    uri = a.tracking_uri or default_tracking_uri()
    experiments = [e.strip() for e in a.experiments.split(",") if e.strip()]
    frame, missing = load_runs(experiments, uri)
    if missing:
        print(f"warning: no experiment {', '.join(map(repr, missing))} in {uri}", file=sys.stderr)
    found = [e for e in experiments if e not in missing]
    note = (f"From `{uri}`, experiments {', '.join(found) or 'none'}"
            + (f" (not found: {', '.join(missing)})" if missing else "")
            + f"; generated {time.strftime('%Y-%m-%d %H:%M')} by `python -m reports.size_table`.")
    table = build_table(frame, note, split(a.evals), split(a.exclude_evals))
    paths = write_outputs(table, Path(a.out))
    print(table.markdown)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
