"""DocVQA (validation): questions about document scans, ANLS as lmms-eval 0.7.3 scores it.

    python -m evals.docvqa CKPT                   # lmms-lab-encoder/DocVQA, DocVQA, validation (docvqa_val)
    python -m evals.docvqa CKPT --data docvqa.parquet

Prompt: the question, then "\\nAnswer the question using a single word or phrase."; up to 32 new
tokens. Scoring: ANLS against the list of accepted answers (evals/vqa_metrics.py::anls): 1 minus
the smallest normalised edit distance, 0 below 0.5. Score: `anls`, the mean over items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evals.prompts import SHORT_ANSWER
from evals.task import Scored, Task
from evals.vqa_metrics import anls


@dataclass(frozen=True)
class DocVQA(Task):
    name: str = "docvqa"
    lmms_task: str = "docvqa_val"
    hub_id: str = "lmms-lab-encoder/DocVQA"
    hub_config: str | None = "DocVQA"
    split: str = "validation"
    columns: tuple[str, ...] = ("questionId", "question", "answers")
    id_column: str = "questionId"
    max_new_tokens: int = 32
    post_prompt: str = SHORT_ANSWER
    primary: str = "anls"
    mean_metrics: tuple[str, ...] = ("anls",)  # aggregation: mean
    schema_hint: str = "DocVQA's schema: questionId, question, image, answers (list of strings)"
    scoring: str = "ANLS, threshold 0.5"

    def judge(self, row: dict[str, Any], answer: str) -> Scored:
        answers = list(row["answers"] or [])
        return Scored(anls(answer.strip(), answers), answer.strip(), answers)


TASK = DocVQA()

if __name__ == "__main__":
    from evals.cli import main

    main(TASK)
