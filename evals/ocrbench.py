"""OCRBench: 1000 text-recognition and text-VQA questions, scored as lmms-eval 0.7.3 does.

    python -m evals.ocrbench CKPT                 # echo840/OCRBench, test
    python -m evals.ocrbench CKPT --data ocrbench.parquet

Prompt: the question, stripped, nothing added; up to 128 new tokens. Scoring: right when one of
the gold answers is contained in the answer (lower case, full-width characters folded; for
handwritten maths, "HME100k", case kept and all spaces removed). Score: `ocrbench_accuracy` =
the number right / 1000, as lmms-eval divides by OCRBench's size whatever the number of items
(with --limit or a small set it is not a fraction of the items: `accuracy` beside it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from evals.aggregate import group
from evals.task import Aggregated, Scored, Task
from evals.vqa_metrics import ocrbench_correct

OCRBENCH_SIZE = 1000


@dataclass(frozen=True)
class OCRBench(Task):
    name: str = "ocrbench"
    lmms_task: str = "ocrbench"
    hub_id: str = "echo840/OCRBench"
    split: str = "test"
    columns: tuple[str, ...] = ("question", "answer", "dataset", "question_type")
    max_new_tokens: int = 128
    primary: str = "ocrbench_accuracy"
    schema_hint: str = "OCRBench's schema: question, answer (list), dataset, question_type, image"
    scoring: str = "a gold answer is a substring of the answer (HME100k: spaces removed, case kept)"

    def question(self, row: dict[str, Any]) -> str:
        return row["question"].strip()

    def judge(self, row: dict[str, Any], answer: str) -> Scored:
        gold = row["answer"]
        return Scored(float(ocrbench_correct(answer.strip(), gold, row["dataset"])), answer.strip(), gold)

    def aggregate_with_breakdown(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> Aggregated:
        # the breakdown: the counts lmms-eval writes to ocrbench_results.txt, by question type
        by_type = group([r["question_type"] for r in rows], [s.score for s in scored])
        return ({"ocrbench_accuracy": sum(s.score for s in scored) / OCRBENCH_SIZE},
                {"question_type (number right)": {k: float(sum(v)) for k, v in by_type.items()}})


TASK = OCRBench()

if __name__ == "__main__":
    from evals.cli import main

    main(TASK)
