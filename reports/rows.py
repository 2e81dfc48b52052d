"""The rows of the size table: which MLflow runs fill which row (no formatting here, see reports.table).

    rows, eval_metrics, untagged = collect_rows(frame)      # frame: reports.runs.load_runs
    select_evals(["eval/mme/total", ...], include=("eval/*",), exclude=DEFAULT_EVAL_EXCLUDE)

One row per profiled architecture, device and profile setting (batch size, sequence length,
accumulation, packed sample length):
- its measurements come from the newest FINISHED profile run (`reports.profile`) of that preset,
  device and setting, else the newest failed one (the table shows its error);
- evaluation scores (`eval/<task>/<score>` matching the patterns; MMStar's `eval/mmstar/average`
  always has a column) come from the newest run of the same architecture that logged them (the
  evaluation CLI logs to the training run of the checkpoint, else to `nanovlm-evals`): same preset
  tag, and the same backbones and parameter total where the run records them, so a training run with
  `--vision_encoder` swapped does not lend its score to the preset's row;
- an architecture that was trained or evaluated but never profiled gets a row of its own, with the
  parameter counts its run logged, if any.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from nanovlm import metrics as metric_names
from reports import names as report_names
from reports.profile import DEFAULT_ROWS, PROFILE_KIND, RUN_KIND_TAG
from reports.runs import run_value

MMSTAR = metric_names.eval_name("mmstar", "average")
STDERR, STDERR_CLT = "_stderr", "_stderr_clt"  # suffixes of a score's standard errors (evals/mlflow_log.py)
DEFAULT_EVALS = ("eval/*",)
# `failed` is a count of items without a usable answer, not a score; standard errors go beside their scores.
DEFAULT_EVAL_EXCLUDE = ("eval/*/failed", f"eval/*/*{STDERR}", f"eval/*/*{STDERR_CLT}")


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
        return {"tags.vision_encoder": run_value(run, "tags.vision_encoder"),
                "tags.language_model": run_value(run, "tags.language_model"),
                "metrics.params/total": run_value(run, "metrics." + report_names.param_metric("total"))}


def _same_architecture(row: Row, run: pd.Series) -> bool:
    """Same preset, and the same backbones and parameter total wherever both record them."""
    if run_value(run, "tags.preset") != row.preset:
        return False
    return all(mine is None or run_value(run, k) is None or run_value(run, k) == mine
               for k, mine in row.signature().items())


def _batch_size(row: Row) -> int:
    size = run_value(row.source, "params.profile.batch_size")
    return int(size) if size is not None else 0


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
    """Rows, the eval metric columns (MMStar first), and how many runs with scores had no preset tag.

    `frame` is newest first (`reports.runs.load_runs`)."""
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
            row = Row(run["tags.preset"], run_value(run, "tags.device") or "", params_run=run)
            rows.append(row)
            matches = [row]
        for row in matches:
            for metric in eval_metrics:
                if metric not in row.evals and run_value(run, "metrics." + metric) is not None:
                    row.evals[metric] = run
    # The source's rows first, in its order; within a preset, profiled rows before the others.
    rows.sort(key=lambda r: (*_row_order(r.preset), r.profile is None and r.failed is None, r.device, _batch_size(r)))
    return rows, eval_metrics, untagged_evals
