"""Running one benchmark on one model: prompts -> batched generation -> scores, every item accounted for.

    data = load_task_data(TASK, "mmstar.parquet", limit=100)          # hub id or local path (None: the hub)
    result = evaluate_task(model, TASK, data, batch_size=32)          # -> TaskResult
    result.scores            # lmms-eval's metrics by lmms-eval's names, e.g. {"average": 0.35, "math": ...}
    result.accuracy          # plain mean of item scores (failed items count as 0)
    result.counts            # {"items", "failed", "unparsed", "correct"}
    result.failed            # [{"id", "error"}]: items whose image could not be read
    result.predictions       # [{"id", "output", "extracted", "gold", "score", "correct"}]

An unreadable image fails its item: it is not generated, scores 0, and is counted and listed. An
answer in which the task's rule recognises nothing (no letter, no yes/no) scores 0 and counts as
"unparsed". Neither is dropped, so scores stay comparable with the full dataset's.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any

from evals.aggregate import mean
from evals.data import EvalData, load_eval_data
from evals.generation import Failed, generate
from evals.postprocess import cut_at_stop
from evals.task import Scored, Task

REFERENCE = {"name": "lmms-eval", "version": "0.7.3"}


@functools.lru_cache(maxsize=None)
def harness_info() -> dict[str, str]:
    """This harness's name and version (the package's, and the git commit when run from a clone)."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    try:
        package = version("nanovlm-lab")
    except PackageNotFoundError:
        package = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"name": "nanovlm-lab evals", "version": package, "git_commit": commit or "unknown",
            "rules": f"{REFERENCE['name']} {REFERENCE['version']}"}


@dataclass
class TaskResult:
    """One task's outcome on one model (results.json holds all of it but the predictions)."""

    task: str
    scores: dict[str, float]
    accuracy: float
    counts: dict[str, int]
    failed: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    breakdown: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    definition: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def primary(self) -> float:
        return self.scores.get(self.definition.get("primary", ""), self.accuracy)

    @property
    def items_per_s(self) -> float:
        return self.counts["items"] / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """Everything but the per-item predictions (results.json)."""
        out = dataclasses.asdict(self)
        out.pop("predictions")
        out["items_per_s"] = self.items_per_s
        return out


def load_task_data(task: Task, source: str | None = None, limit: int | None = None) -> EvalData:
    """The task's data from `source` (a hub id or local path; default: the task's hub dataset)."""
    source = source or task.hub_id
    # the task's hub config (e.g. ScienceQA-IMG) applies to the task's own hub dataset only
    return load_eval_data(source, split=task.split, config=task.hub_config if source == task.hub_id else None,
                          columns=task.columns, image_columns=task.image_columns, limit=limit, task=task.name,
                          schema_hint=task.schema_hint)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    # tqdm's rate is items/s, shown live; it goes to stderr so stdout keeps just the table
    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, dynamic_ncols=True)


def default_workers(model: Any) -> int:
    """DataLoader workers decoding images: 2 beside a GPU; none on CPU, where they would take
    cores from the model (measured: the tiny model on 2 cores runs 2-4x slower with workers)."""
    return 2 if next(model.parameters()).device.type == "cuda" else 0


def evaluate_task(model: Any, task: Task, data: EvalData, *, batch_size: int = 32, max_new_tokens: int | None = None,
                  num_workers: int | None = None, progress: bool = True) -> TaskResult:
    """Generate a reply to every item and score it; `seconds` (hence items/s) covers prompting,
    image decoding, generation and scoring."""
    max_new_tokens = max_new_tokens or task.max_new_tokens
    num_workers = default_workers(model) if num_workers is None else num_workers
    questions = [task.prompt(row) for row in data.rows]
    bar = _progress(len(questions), task.name, progress)
    start = time.perf_counter()
    try:
        outputs = generate(model, questions, data.images, counts=data.image_counts, batch_size=batch_size,
                           max_new_tokens=max_new_tokens, num_workers=num_workers, progress=bar)
    finally:
        bar.close()

    scored: list[Scored] = []
    predictions, failed = [], []
    for index, (row, output) in enumerate(zip(data.rows, outputs)):
        item_id = task.item_id(row, index)
        if isinstance(output, Failed):
            # Judged on an empty answer only to read the gold label; a failed item always scores 0.
            s = dataclasses.replace(task.judge(row, ""), score=0.0, extracted=None, parsed=False)
            failed.append({"id": item_id, "error": output.error})
            text = None
        else:
            text = cut_at_stop(output, task.stop)
            s = task.score(row, text)
        scored.append(s)
        predictions.append({"id": item_id, "output": text, "extracted": s.extracted, "gold": s.gold,
                            "score": s.score, "correct": s.score == 1.0,
                            **({"error": failed[-1]["error"]} if text is None else {})})
    if data.rows and len(failed) == len(data.rows):
        raise RuntimeError(f"{task.name}: every item failed, e.g. {failed[0]['error']}; check the data's image "
                           f"column ({', '.join(task.image_columns)})")
    seconds = time.perf_counter() - start
    item_scores = [s.score for s in scored]
    counts = {"items": len(scored), "failed": len(failed),
              "unparsed": sum(not s.parsed for s, p in zip(scored, predictions) if p["output"] is not None),
              "correct": sum(s.score == 1.0 for s in scored)}
    return TaskResult(
        task=task.name, scores=task.aggregate(data.rows, scored) if scored else {}, accuracy=mean(item_scores),
        counts=counts, failed=failed, predictions=predictions, breakdown=task.breakdown(data.rows, scored),
        generation={"max_new_tokens": max_new_tokens, "batch_size": batch_size, "do_sample": False,
                    "decoding": "greedy, KV cache, stop at end of turn", "stop_strings": list(task.stop),
                    "num_workers": num_workers},
        data=data.describe(), definition={**task.describe(), "example_prompt": questions[0] if questions else None},
        seconds=seconds)
