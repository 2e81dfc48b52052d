"""Writing evaluation results: the table on stdout, results.json and predictions.jsonl on disk.

    out = write_task_result(result, out_dir / "mmstar", checkpoint="runs/x/checkpoints/step-100")
    print(format_table(result))
    default_out_dir("runs/x/checkpoints/step-100")   # runs/x/checkpoints/evals/step-100

Results go beside the checkpoint, not inside it: checkpoint folders are replaced whole when they
are rewritten (`best`) or rotated away, and evaluations should outlive that.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Sequence

from evals.harness import REFERENCE, TaskResult, harness_info
from evals.resume import json_safe, write_lines
from nanovlm.files import write_json


def default_out_dir(checkpoint: str) -> Path:
    path = Path(checkpoint)
    if path.is_dir():
        return path.resolve().parent / "evals" / path.resolve().name
    return Path("evals_out") / re.sub(r"[^\w.-]+", "_", checkpoint)  # a hub id


def write_task_result(result: TaskResult, out_dir: str | Path, checkpoint: str,
                      extra: dict[str, Any] | None = None) -> Path:
    """results.json (scores, standard errors, settings, provenance) and predictions.jsonl (one line
    per item, in data order; evals/resume.py describes the lines)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", json_safe({"harness": harness_info(), "reference": REFERENCE,
                                                "checkpoint": checkpoint, **(extra or {}), **result.summary()}))
    write_lines(out / "predictions.jsonl", result.predictions)
    return out


def _fmt(value: float) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}"


def _pm(stderr: float | None) -> str:
    """" ± 0.0123" (lmms-eval's standard error), or "" where it reports none."""
    return "" if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)) else f" ± {stderr:.4f}"


def format_table(result: TaskResult) -> str:
    """One task's scores: lmms-eval's metrics (its units: fractions; MME: points), then ours."""
    c, d = result.counts, result.data
    lines = [f"{result.task}: {d.get('source')} [{d.get('split')}], {c['items']} items, {c['failed']} failed, "
             f"{c['unparsed']} unrecognised answers, {result.items_per_s:.1f} items/s"]
    names = [*result.scores, *(k for table in result.breakdown.values() for k in table)]
    width = max([len(str(k)) for k in names] + [24])
    for name, value in result.scores.items():
        lines.append(f"  {name:<{width}}  {_fmt(value)}{_pm(result.stderr.get(name))}")
    lines.append(f"  {'accuracy (plain mean)':<{width}}  {_fmt(result.accuracy)}{_pm(result.accuracy_stderr)}")
    na = [name for name in result.scores if result.stderr.get(name) is None]
    if na and result.stderr:
        lines.append(f"  (no standard error for {', '.join(na)}: lmms-eval reports N/A for its aggregation)")
    for title, table in result.breakdown.items():
        lines.append(f"  by {title}:")
        for name, value in table.items():
            shown = value if not isinstance(value, dict) else value.get("score", value)
            extra = ""
            if isinstance(value, dict):
                extra = "  " + ", ".join(f"{k} {_fmt(v) if isinstance(v, float) else v}" for k, v in value.items()
                                         if k != "score")
            lines.append(f"    {name:<{width - 2}}  {_fmt(shown) if isinstance(shown, float) else shown}{extra}")
    if result.failed:
        shown = ", ".join(str(f["id"]) for f in result.failed[:10])
        lines.append(f"  failed items: {shown}{' ...' if len(result.failed) > 10 else ''} (see results.json)")
    return "\n".join(lines)


def format_summary(results: Sequence[TaskResult]) -> str:
    """Several tasks, one line each: the headline score and the counts."""
    lines = [f"{'task':<16} {'score':<24} {'value':>10} {'accuracy':>9} {'items':>6} {'failed':>6} {'items/s':>8}"]
    for r in results:
        primary = r.definition.get("primary", "")
        lines.append(f"{r.task:<16} {primary:<24} {_fmt(r.primary):>10} {_fmt(r.accuracy):>9} {r.counts['items']:>6} "
                     f"{r.counts['failed']:>6} {r.items_per_s:>8.1f}")
    return "\n".join(lines)
