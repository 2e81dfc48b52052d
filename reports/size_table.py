"""The "Model Size Comparison" table, filled from MLflow: profiles, training runs, evaluation scores.

    python -m reports.profile                       # measure the rows first (experiment "profile")
    python -m reports.size_table                    # -> runs/size_table/size_table.md, .csv, two PNGs
    python -m reports.size_table --experiments profile,nanovlm,evals --out docs/size --tracking_uri sqlite:///$PWD/mlflow.db

The command line over four steps, one module each: `reports.runs` reads every run of
`--experiments` into a pandas frame, `reports.rows` decides which runs fill which row (one per
profiled architecture, device and profile setting; scores from runs of the same architecture),
`reports.table` writes the markdown (every empty cell with a footnote saying why) and the CSV, and
`reports.plots` draws parameters vs MMStar and the training throughput per row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from reports import names as report_names
from reports.plots import plot_params_vs_mmstar, plot_throughput
from reports.rows import DEFAULT_EVAL_EXCLUDE, DEFAULT_EVALS
from reports.runs import load_runs
from reports.table import Table, build_table

DEFAULT_EXPERIMENTS = (report_names.EXPERIMENT, report_names.TRAINING_EXPERIMENT, report_names.EVAL_EXPERIMENT)


def write_outputs(table: Table, out: Path) -> dict[str, Path]:
    """The markdown, the CSV and the two plots into `out`; returns their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "size_table.md", "csv": out / "size_table.csv",
             "params_vs_mmstar": out / "params_vs_mmstar.png", "throughput": out / "throughput.png"}
    paths["markdown"].write_text(table.markdown)
    table.frame.to_csv(paths["csv"], index=False)
    plot_params_vs_mmstar(table.frame, paths["params_vs_mmstar"])
    plot_throughput(table.frame, paths["throughput"])
    return paths


def _split(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


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
    experiments = list(_split(a.experiments))
    if not experiments:
        p.error(f"--experiments is empty: name at least one, e.g. --experiments {','.join(DEFAULT_EXPERIMENTS)}")
    from nanovlm.tracking import default_tracking_uri

    from mlflow.exceptions import MlflowException

    uri = a.tracking_uri or default_tracking_uri()
    try:
        frame, missing = load_runs(experiments, uri)
    except MlflowException as e:  # an unsupported or unreachable store
        print(f"error: cannot read the MLflow store {uri}: {e.message.strip()} (check --tracking_uri)", file=sys.stderr)
        return 2
    if missing:
        print(f"warning: no experiment {', '.join(map(repr, missing))} in {uri}", file=sys.stderr)
    found = [e for e in experiments if e not in missing]
    note = (f"From `{uri}`, experiments {', '.join(found) or 'none'}"
            + (f" (not found: {', '.join(missing)})" if missing else "")
            + f"; generated {time.strftime('%Y-%m-%d %H:%M')} by `python -m reports.size_table`.")
    table = build_table(frame, note, _split(a.evals), _split(a.exclude_evals))
    paths = write_outputs(table, Path(a.out))
    print(table.markdown)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
