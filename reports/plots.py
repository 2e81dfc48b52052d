"""The size table's two plots, drawn from its CSV frame (`reports.table.Table.frame`) into PNG files.

    plot_params_vs_mmstar(table.frame, Path("runs/size_table/params_vs_mmstar.png"))
    plot_throughput(table.frame, Path("runs/size_table/throughput.png"))

Matplotlib is set up by `nanovlm.plots` (headless Agg); a plot with nothing to draw still says why.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nanovlm import plots
from reports.rows import MMSTAR, STDERR, STDERR_CLT
from reports.table import significant


def _label(record: pd.Series) -> str:
    batch = "" if pd.isna(record["batch_size"]) else f", batch {record['batch_size']}"
    if batch and not pd.isna(record["packed"]) and bool(record["packed"]):
        batch += f" x {record['seq_len']} packed"
    return f"{record['preset']}{batch}\n{record['device']}" if record["device"] else f"{record['preset']}{batch}"


def _mmstar_stderr(have: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Error bars: lmms-eval's standard error, else (MMStar's average has none) its CLT one; and
    the names of the ones used."""
    yerr, used = pd.Series(float("nan"), index=have.index), []
    for column in (MMSTAR + STDERR_CLT, MMSTAR + STDERR):
        values = pd.to_numeric(have[column], errors="coerce") if column in have else yerr * float("nan")
        if values.notna().any():
            used.append(column.rpartition("/")[2])
        yerr = values.where(values.notna(), yerr)
    return yerr, used


def plot_params_vs_mmstar(csv: pd.DataFrame, path: Path) -> Path:
    fig, ax = plots.pyplot().subplots(figsize=(7, 4.5))
    have = csv[csv["total_params"].notna() & csv[MMSTAR].notna()] if MMSTAR in csv else csv.iloc[0:0]
    # One point per architecture: rows of the same preset on two devices have the same score.
    have = have.drop_duplicates(subset=["preset", "total_params", MMSTAR])
    yerr, used = _mmstar_stderr(have)
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
    ax.set(xlabel="total parameters (M)", ylabel="MMStar average", title="Parameters vs MMStar")
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def plot_throughput(csv: pd.DataFrame, path: Path) -> Path:
    fig, ax = plots.pyplot().subplots(figsize=(7, 1.2 + 0.6 * max(1, len(csv))))
    ax.barh(range(len(csv)), csv["samples_per_s"].astype(float).fillna(0.0).tolist(), color="tab:green")
    for i, (_, r) in enumerate(csv.iterrows()):
        if pd.isna(r["samples_per_s"]):
            ax.text(0, i, " not profiled", va="center", color="gray", fontsize=8)
        else:
            ax.text(r["samples_per_s"], i, f" {significant(r['samples_per_s'])}", va="center", fontsize=8)
    ax.set_yticks(range(len(csv)), [_label(r) for _, r in csv.iterrows()], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="training samples/s (profiled batch and sequence length)", title="Training throughput per row")
    ax.margins(x=0.15)
    return plots.save(fig, path)
