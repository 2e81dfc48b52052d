"""ChartQA (test): questions about charts, relaxed accuracy as lmms-eval 0.7.3 scores it.

    python -m evals.chartqa CKPT                  # lmms-lab-encoder/ChartQA, test
    python -m evals.chartqa CKPT --data chartqa.parquet

Prompt: the question, then "\\nAnswer the question with a single word.". Scoring: when answer and
gold both read as numbers ("12%" = 0.12), right within 5% of a non-zero gold; otherwise a
case-insensitive exact match. Scores: `relaxed_overall`, and the same over the human-written
(`relaxed_human_split`, type "human_test") and generated (`relaxed_augmented_split`) questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from evals.prompts import SINGLE_WORD
from evals.task import Scored, Task
from evals.vqa_metrics import relaxed_correct


@dataclass(frozen=True)
class ChartQA(Task):
    name: str = "chartqa"
    lmms_task: str = "chartqa"
    hub_id: str = "lmms-lab-encoder/ChartQA"
    split: str = "test"
    columns: tuple[str, ...] = ("type", "question", "answer")
    post_prompt: str = SINGLE_WORD
    primary: str = "relaxed_overall"
    mean_metrics: tuple[str, ...] = ("relaxed_overall", "relaxed_human_split", "relaxed_augmented_split")
    schema_hint: str = "ChartQA's schema: type (human_test / augmented_test), question, answer, image"
    scoring: str = "relaxed accuracy: numbers within 5% of a non-zero gold, else case-insensitive exact match"

    def judge(self, row: dict[str, Any], answer: str) -> Scored:
        return Scored(float(relaxed_correct(answer.strip(), row["answer"])), answer.strip(), row["answer"])

    def metric_items(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> dict[str, list[float]]:
        human = [s.score for r, s in zip(rows, scored) if r["type"] == "human_test"]
        augmented = [s.score for r, s in zip(rows, scored) if r["type"] != "human_test"]
        out = {"relaxed_overall": [s.score for s in scored]}
        if human:  # lmms-eval has no value for a split without items
            out["relaxed_human_split"] = human
        if augmented:
            out["relaxed_augmented_split"] = augmented
        return out


TASK = ChartQA()

if __name__ == "__main__":
    from evals.cli import main

    main(TASK)
