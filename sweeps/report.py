"""What a sweep leaves behind: the best trial on the parent run, a trials table, plots and a summary.

    log_best(parent, study, settings)                          # after every trial: best.* tags, best/<metric>
    summary = write_and_log(parent, study, settings, out_dir)  # trials.csv, best.json, summary.txt, plots/*.png

Everything is computed from the whole study, not from this worker's trials, so whichever worker
finishes last leaves a complete report on the parent run (earlier copies are overwritten).
Plots come from `optuna.visualization.matplotlib`, drawn and saved through `nanovlm.plots`; a plot
that cannot be drawn yet (say, parameter importances with fewer than two complete trials) is
skipped with a warning, never an error.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna

from nanovlm import plots
from sweeps import space as search_space
from sweeps import storage as sweep_storage
from sweeps.names import ATTR_RUN, ATTR_WORKER
from sweeps.workers import counts, retried_from

log = logging.getLogger("sweeps.report")
TrialState = optuna.trial.TrialState
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values")


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    return study.best_trial if _complete(study) else None


def log_best(parent: Any, study: optuna.Study, settings: Any) -> None:
    """The best value and parameters so far, as tags (readable in the runs table) and a metric
    whose history, by number of finished trials, shows the sweep converging."""
    best = _best(study)
    if best is None:
        return
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    parent.set_tags({"best.trial": best.number, "best.value": best.value,
                     "best.mlflow_run_id": best.user_attrs.get(ATTR_RUN, ""),
                     **{f"best.params.{k}": search_space.show(v) for k, v in best.params.items()}})
    parent.log_metrics({f"best/{settings.metric}": best.value}, step=finished)
    parent.flush()


def _blank_if_none(value: Any) -> Any:
    return "" if value is None else value


def _last_step(trial: optuna.trial.FrozenTrial) -> int | str:
    return max(trial.intermediate_values) if trial.intermediate_values else ""


def trial_rows(study: optuna.Study, settings: Any) -> list[dict[str, Any]]:
    names = list(settings.space)
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = t.duration.total_seconds() if t.duration is not None else ""
        rows.append({
            "number": t.number, "state": t.state.name, settings.metric: "" if t.value is None else t.value,
            **{name: t.params.get(name, "") for name in names},
            "last_step": _last_step(t), "duration_s": duration,
            "retried_from": _blank_if_none(retried_from(t)), "worker": t.user_attrs.get(ATTR_WORKER, ""),
            "mlflow_run_id": t.user_attrs.get(ATTR_RUN, ""),
            "datetime_start": t.datetime_start or "", "datetime_complete": t.datetime_complete or "",
        })
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


def save_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances, parallel coordinates and intermediate values."""
    from optuna.visualization import matplotlib as ovm

    plt = plots.pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    with plt.rc_context():  # Optuna's plots switch the global style to ggplot: restore it after
        for name in PLOTS:
            path = _save_plot(study, name, out_dir, plt, ovm)
            if path is not None:
                saved.append(path)
    return saved


def _save_plot(study: optuna.Study, name: str, out_dir: Path, plt: Any, ovm: Any) -> Path | None:
    if name == "param_importances" and len(_complete(study)) < 2:
        log.warning("plot %s skipped: it needs at least 2 complete trials", name)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the matplotlib backend is "experimental" in Optuna
            axes = getattr(ovm, f"plot_{name}")(study)
        return plots.save((axes.flat[0] if hasattr(axes, "flat") else axes).figure, out_dir / f"{name}.png")
    except Exception as e:  # too few trials, a constant parameter: a missing plot must not fail the sweep
        log.warning("plot %s skipped: %s", name, e)
        plt.close("all")
        return None


def summarise(study: optuna.Study, settings: Any, parent_run_id: str, top: int = 5, ui: str = "") -> str:
    found = counts(study)
    finished = found.get("COMPLETE", 0) + found.get("PRUNED", 0)
    lines = [f"Sweep {settings.study_name}: {finished} finished trials of {settings.target()} wanted "
             f"({found.get('COMPLETE', 0)} complete, {found.get('PRUNED', 0)} pruned, {found.get('FAIL', 0)} failed"
             f"{', %d running elsewhere' % found['RUNNING'] if found.get('RUNNING') else ''}); "
             f"{settings.metric}, {settings.direction}"]
    best = _best(study)
    if best is None:
        lines.append("No complete trial yet.")
    else:
        params = ", ".join(f"{k}={search_space.show(v)}" for k, v in best.params.items())
        lines.append(f"Best: trial {best.number}, {settings.metric} = {best.value:.5g} ({params})")
        ranked = sorted(_complete(study), key=lambda t: t.value, reverse=settings.direction == "maximize")[:top]
        names = list(settings.space)
        header = ["trial", settings.metric, *names, "seconds", "MLflow run"]
        table = [[str(t.number), f"{t.value:.5g}", *(search_space.show(t.params.get(n, "")) for n in names),
                  f"{t.duration.total_seconds():.0f}" if t.duration else "", t.user_attrs.get(ATTR_RUN, "")]
                 for t in ranked]
        widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
        lines.append(f"Top {len(ranked)}:")
        for row in [header, *table]:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    lines.append(f"Study {settings.study_name!r} in {sweep_storage.redact(settings.storage)}; MLflow parent run {parent_run_id} "
                 f"(experiment {settings.base.experiment!r}) in {settings.tracking_uri}")
    if ui:
        lines.append(f"In the MLflow UI: {ui}")
    return "\n".join(lines)


def write_and_log(parent: Any, study: optuna.Study, settings: Any, out_dir: Path, ui: str = "") -> str:
    """Write the report files to `out_dir`, attach them to the parent run, and return the summary
    (ending with `ui`, the sweep's link in the MLflow UI, when given)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(study, settings, parent.run_id, ui=ui)
    files = [write_csv(trial_rows(study, settings), out_dir / "trials.csv")]
    (out_dir / "summary.txt").write_text(summary + "\n")
    files.append(out_dir / "summary.txt")
    best = _best(study)
    if best is not None:
        (out_dir / "best.json").write_text(json.dumps(
            {"trial": best.number, "metric": settings.metric, "value": best.value, "params": best.params,
             "mlflow_run_id": best.user_attrs.get(ATTR_RUN, "")}, indent=2) + "\n")
        files.append(out_dir / "best.json")
    for path in files:
        parent.log_artifact(path)
    for path in save_plots(study, out_dir / "plots"):
        parent.log_artifact(path, "plots")
    log_best(parent, study, settings)
    return summary
