"""Running one benchmark on one model: prompts -> batched generation -> scores, every item accounted for.

    data = load_task_data(TASK, "mmstar.parquet", limit=100)          # hub id or local path (None: the hub)
    result = evaluate_task(model, TASK, data, batch_size=32)          # -> TaskResult
    result.scores            # lmms-eval's metrics by lmms-eval's names, e.g. {"average": 0.35, "math": ...}
    result.stderr            # lmms-eval's <metric>_stderr per score (None where lmms-eval reports N/A)
    result.stderr_clt        # lmms-eval's <metric>_stderr_clt per score (the item mean's standard error)
    result.accuracy          # plain mean of item scores (failed items count as 0)
    result.counts            # {"items", "failed", "unparsed", "correct"}
    result.failed            # [{"id", "error"}]: items whose image could not be read
    result.predictions       # [{"id", "output", "extracted", "gold", "score", "correct"}]

An unreadable image fails its item: it is not generated, scores 0, and is counted and listed. An
answer in which the task's rule recognises nothing (no letter, no yes/no) scores 0 and counts as
"unparsed". Neither is dropped, so scores stay comparable with the full dataset's.

With `predictions_path`, each item's line is appended to that file as soon as its batch is
generated, and a rerun with the same `model_id` (and task, data, prompts and generation settings)
generates only the items not there yet, giving the same result as an uninterrupted run
(evals/resume.py):

    result = evaluate_task(model, TASK, data, predictions_path=out / "predictions.jsonl",
                           model_id=checkpoint_identity(checkpoint))
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.aggregate import mean, mean_stderr
from evals.data import EvalData, load_eval_data
from evals.generation import Failed, generate
from evals.postprocess import cut_at_stop
from evals.resume import PredictionLog, digest, write_lines
from evals.task import Scored, Task

REFERENCE = {"name": "lmms-eval", "version": "0.7.3"}


@functools.lru_cache(maxsize=None)
def harness_info() -> dict[str, str]:
    """This harness's name and version (the package's, and the git commit when run from a clone)."""
    from importlib.metadata import PackageNotFoundError, version

    from nanovlm.provenance import git_sha

    try:
        package = version("nanovlm-lab")
    except PackageNotFoundError:
        package = "unknown"
    return {"name": "nanovlm-lab evals", "version": package, "git_commit": git_sha(short=False),
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
    stderr: dict[str, float | None] = field(default_factory=dict)      # lmms-eval's <metric>_stderr
    stderr_clt: dict[str, float | None] = field(default_factory=dict)  # lmms-eval's <metric>_stderr_clt
    accuracy_stderr: float | None = None  # the plain accuracy's (a mean: mean_stderr)
    generation: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    definition: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    items_timed: int | None = None  # items generated in `seconds` (fewer than all when resumed)

    @property
    def primary(self) -> float:
        return self.scores.get(self.definition.get("primary", ""), self.accuracy)

    @property
    def items_per_s(self) -> float:
        items = self.counts["items"] if self.items_timed is None else self.items_timed
        return items / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """Everything but the per-item predictions (results.json)."""
        out = dataclasses.asdict(self)
        out.pop("predictions")
        out["items_per_s"] = self.items_per_s
        return out


def load_task_data(task: Task, source: str | None = None, limit: int | None = None, *,
                   revision: str | None = None) -> EvalData:
    """The task's data from `source` (a hub id or local path; default: the task's hub dataset), at
    `revision` (default: the task's pinned `revision` for its own hub dataset)."""
    source = source or task.hub_id
    own = source == task.hub_id
    # the task's hub config (e.g. ScienceQA-IMG) and pinned revision apply to its own hub dataset only
    return load_eval_data(source, split=task.split, config=task.hub_config if own else None,
                          columns=task.columns, image_columns=task.image_columns, limit=limit, task=task.name,
                          schema_hint=task.schema_hint, revision=revision or (task.revision if own else None))


def _progress(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    from tqdm.auto import tqdm

    # tqdm's rate is items/s, shown live; it goes to stderr so stdout keeps just the table
    return tqdm(total=total, initial=initial, desc=desc, unit="item", disable=not enabled, dynamic_ncols=True)


def default_workers(model: Any) -> int:
    """DataLoader workers decoding images: 2 beside a GPU; none on CPU, where they would take
    cores from the model (measured: the tiny model on 2 cores runs 2-4x slower with workers)."""
    return 2 if next(model.parameters()).device.type == "cuda" else 0


class _Subset:
    """Items `indices` of a sequence (a task's image lists), picklable for DataLoader workers."""

    def __init__(self, items: Any, indices: list[int]):
        self.items, self.indices = items, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.items[self.indices[i]]


def resume_key(task: Task, data: EvalData, questions: list[str], max_new_tokens: int, model: Any,
               model_id: Any) -> dict[str, Any]:
    """What an item's line depends on (evals/resume.py); batch size and workers are not in it."""
    param = next(model.parameters())
    return {"model": model_id, "weights": {"dtype": str(param.dtype), "device": param.device.type},
            "task": task.describe(), "data": data.describe(), "prompts": digest(questions),
            "generation": {"max_new_tokens": max_new_tokens, "do_sample": False, "stop_strings": list(task.stop)},
            "rules": REFERENCE}


def _judge(task: Task, row: dict[str, Any], output: "str | Failed") -> Scored:
    if isinstance(output, Failed):
        # Judged on an empty answer only to read the gold label; a failed item always scores 0.
        return dataclasses.replace(task.judge(row, ""), score=0.0, extracted=None, parsed=False)
    return task.score(row, output)


def _line(index: int, item_id: Any, output: "str | Failed", s: Scored) -> dict[str, Any]:
    failed = isinstance(output, Failed)
    return {"index": index, "id": item_id, "output": None if failed else output, "extracted": s.extracted,
            "gold": s.gold, "score": s.score, "correct": s.score == 1.0,
            **({"error": output.error} if failed else {})}


def evaluate_task(model: Any, task: Task, data: EvalData, *, batch_size: int = 32, max_new_tokens: int | None = None,
                  num_workers: int | None = None, progress: bool = True, predictions_path: str | Path | None = None,
                  model_id: Any = None, resume: bool = True, given: dict[int, Any] | None = None) -> TaskResult:
    """Generate a reply to every item and score it; `seconds` (hence items/s) covers prompting,
    image decoding, generation and scoring of the items generated by this call.

    `predictions_path`: append each item's line there as it is produced; with `model_id` (anything
    JSON-able that identifies the weights, e.g. `evals.resume.checkpoint_identity(ckpt)`) and
    `resume`, items already there from an evaluation with the same key are not generated again.
    `given`: replies already generated elsewhere (item index -> text or Failed, e.g. by other ranks),
    scored here and not generated again.
    """
    max_new_tokens = max_new_tokens or task.max_new_tokens
    num_workers = default_workers(model) if num_workers is None else num_workers
    start = time.perf_counter()
    questions = [task.prompt(row) for row in data.rows]
    ids = [task.item_id(row, index) for index, row in enumerate(data.rows)]
    outputs: list[str | Failed | None] = [None] * len(questions)  # replies cut at the stop strings
    plog = None
    if predictions_path is not None:
        key = resume_key(task, data, questions, max_new_tokens, model, model_id)
        plog = PredictionLog(predictions_path, key if model_id is not None else None, resume=resume)
        for index, line in plog.start(len(questions)).items():
            outputs[index] = line["output"] if line["output"] is not None else Failed(str(line.get("error")))
    for index, out in (given or {}).items():
        outputs[index] = out
    todo = [i for i, out in enumerate(outputs) if out is None]

    def record(batch: list[tuple[int, str | Failed]]) -> None:
        lines = []
        for j, raw in batch:
            index = todo[j]
            out = raw if isinstance(raw, Failed) else cut_at_stop(raw, task.stop)
            outputs[index] = out
            if plog is not None:
                lines.append(_line(index, ids[index], out, _judge(task, data.rows[index], out)))
        if plog is not None:
            plog.append(lines)

    bar = _progress(len(questions), task.name, progress, initial=len(questions) - len(todo))
    try:
        if todo:
            generate(model, [questions[i] for i in todo], _Subset(data.images, todo),
                     counts=[data.image_counts[i] for i in todo], batch_size=batch_size,
                     max_new_tokens=max_new_tokens, num_workers=num_workers, progress=bar, on_batch=record)
    finally:
        bar.close()
        if plog is not None:
            plog.close()

    scored: list[Scored] = []
    predictions, failed = [], []
    for index, (row, output) in enumerate(zip(data.rows, outputs)):
        assert output is not None, f"item {index} was not generated"
        s = _judge(task, row, output)
        scored.append(s)
        predictions.append(_line(index, ids[index], output, s))
        if isinstance(output, Failed):
            failed.append({"id": ids[index], "error": output.error})
    if data.rows and len(failed) == len(data.rows):
        raise RuntimeError(f"{task.name}: every item failed, e.g. {failed[0]['error']}; check the data's image "
                           f"column ({', '.join(task.image_columns)})")
    if plog is not None:
        write_lines(predictions_path, predictions)  # complete: in data order
    seconds = time.perf_counter() - start
    item_scores = [s.score for s in scored]
    counts = {"items": len(scored), "failed": len(failed),
              "unparsed": sum(not s.parsed for s, p in zip(scored, predictions) if p["output"] is not None),
              "correct": sum(s.score == 1.0 for s in scored)}
    scores, breakdown = task.aggregate_with_breakdown(data.rows, scored) if scored else ({}, {})
    return TaskResult(
        task=task.name, scores=scores, accuracy=mean(item_scores),
        counts=counts, failed=failed, predictions=predictions, breakdown=breakdown,
        stderr=task.stderr(data.rows, scored) if scored else {},
        stderr_clt=task.stderr_clt(data.rows, scored) if scored else {},
        accuracy_stderr=mean_stderr(item_scores),
        generation={"max_new_tokens": max_new_tokens, "batch_size": batch_size, "do_sample": False,
                    "decoding": "greedy, KV cache, stop at end of turn", "stop_strings": list(task.stop),
                    "num_workers": num_workers},
        data=data.describe(), definition={**task.describe(), "example_prompt": questions[0] if questions else None},
        seconds=seconds, items_timed=len(todo))
