"""MME: yes/no questions in pairs on one image, 14 subtasks, scored as lmms-eval 0.7.3 does.

    python -m evals.mme CKPT                      # lmms-lab-encoder/MME, test
    python -m evals.mme CKPT --data mme.parquet

Prompt: the question, stripped, without its " Please answer yes or no.", then "\\nAnswer the
question using a single word or phrase.". An answer reads as yes/no from its first characters
(evals/vqa_metrics.py::mme_yes_no); anything else is "other" (wrong, counted as unrecognised).
Per subtask: accuracy (% of questions) + accuracy+ (% of images with both questions right),
0-200. Scores: `mme_perception_score` (10 subtasks, 0-2000) and `mme_cognition_score`
(4 subtasks, 0-800), sums of their subtasks' scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from evals.aggregate import MME_PERCEPTION, mme_scores
from evals.prompts import SHORT_ANSWER, without_yes_no
from evals.task import Aggregated, Scored, Task
from evals.vqa_metrics import mme_gold, mme_yes_no


@dataclass(frozen=True)
class MME(Task):
    name: str = "mme"
    lmms_task: str = "mme"
    hub_id: str = "lmms-lab-encoder/MME"
    split: str = "test"
    columns: tuple[str, ...] = ("question_id", "question", "answer", "category")
    post_prompt: str = SHORT_ANSWER
    primary: str = "mme_perception_score"
    schema_hint: str = "MME's schema: question_id (the image, shared by its 2 questions), question, answer " \
                       "(Yes/No), category, image"
    scoring: str = "yes/no from the answer's first characters; per subtask acc + acc+ (pairs)"

    def item_id(self, row: dict[str, Any], index: int) -> Any:
        return f"{row['question_id']}#{index}"  # the two questions of an image share question_id

    def question(self, row: dict[str, Any]) -> str:
        return without_yes_no(row["question"])

    def judge(self, row: dict[str, Any], answer: str) -> Scored:
        read, gold = mme_yes_no(answer), mme_gold(row["answer"])
        return Scored(float(read == gold), read, gold, parsed=read != "other")

    def aggregate_with_breakdown(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> Aggregated:
        scores, per_task = mme_scores([r["category"] for r in rows], [r["question_id"] for r in rows],
                                      [s.score for s in scored])
        return scores, {"subtask (acc + acc+)": per_task}

    def metric_items(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> dict[str, list[float]]:
        # process_results gives each item to the perception or the cognition score
        perception = [s.score for r, s in zip(rows, scored) if r["category"] in MME_PERCEPTION]
        cognition = [s.score for r, s in zip(rows, scored) if r["category"] not in MME_PERCEPTION]
        return {**({"mme_perception_score": perception} if perception else {}),
                **({"mme_cognition_score": cognition} if cognition else {})}


TASK = MME()

if __name__ == "__main__":
    from evals.cli import main

    main(TASK)
