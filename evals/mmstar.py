"""MMStar: 1500 multiple-choice questions (A-D), 6 categories x 3 sub-axes, scored as lmms-eval 0.7.3 does.

    python -m evals.mmstar CKPT                                  # Lin-Chen/MMStar, split val
    python -m evals.mmstar CKPT --data mmstar.parquet --limit 100 --batch_size 64 --out results/
    python -m evals.mmstar CKPT --legacy_extract                 # the rule of lmms-eval <= 0.7.1

Prompt: the question (options inline), stripped, then "\\nAnswer with the option's letter from
the given choices directly" (no final period), one image, in the LM's chat template. The letter is
read by lmms-eval's multiple-choice extractor (evals/mcq_extract.py); an answer with no letter is
wrong and is recorded as such. Scores: each sub-axis (l2_category) is a mean; a category is the
mean of its sub-axes; `average` is the mean over the 18 sub-axes (what lmms-eval reports, not
plain accuracy, which is reported beside it). lmms-eval reports no standard error for these
(task-specific aggregation: "N/A", recorded as null); its `_stderr_clt` (the item mean's) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from evals.aggregate import mmstar_scores
from evals.mcq_extract import MMSTAR_CHOICES, extract_letter, legacy_correct, legacy_extract
from evals.prompts import without_yes_no
from evals.task import Aggregated, Scored, Task


@dataclass(frozen=True)
class MMStar(Task):
    name: str = "mmstar"
    lmms_task: str = "mmstar"
    hub_id: str = "Lin-Chen/MMStar"
    split: str = "val"
    columns: tuple[str, ...] = ("index", "question", "answer", "category", "l2_category")
    id_column: str = "index"
    post_prompt: str = "\nAnswer with the option's letter from the given choices directly"  # no final period
    primary: str = "average"
    schema_hint: str = ("MMStar's schema: index, question (options inline), image, answer (A-D), category, "
                        "l2_category")
    scoring: str = "lmms-eval >= 0.7.2 extract_mcq_answer, choices A-D"
    legacy_extract: bool = False

    def rule(self) -> str:
        if self.legacy_extract:
            return ("legacy (lmms-eval <= 0.7.1): the gold letter is the first character, or follows an "
                    "opening '(', 'option ' or 'the answer is ' (case-insensitive)")
        return self.scoring

    def question(self, row: dict[str, Any]) -> str:
        return without_yes_no(row["question"])

    def judge(self, row: dict[str, Any], answer: str) -> Scored:
        gold = row["answer"]
        if self.legacy_extract:
            letter = legacy_extract(answer, MMSTAR_CHOICES)
            return Scored(float(legacy_correct(answer, gold)), letter, gold, parsed=bool(letter))
        letter = extract_letter(answer, MMSTAR_CHOICES)
        return Scored(float(letter == gold.strip().upper()), letter, gold, parsed=bool(letter))

    def aggregate_with_breakdown(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> Aggregated:
        scores, l2 = mmstar_scores([r["category"] for r in rows], [r["l2_category"] for r in rows],
                                   [s.score for s in scored])
        return scores, {"l2_category": l2}

    def metric_items(self, rows: Sequence[dict[str, Any]], scored: Sequence[Scored]) -> dict[str, list[float]]:
        # process_results gives each item to its category's metric and to "average"
        out: dict[str, list[float]] = {}
        for row, s in zip(rows, scored):
            out.setdefault(row["category"], []).append(s.score)
        return {**out, "average": [s.score for s in scored]}


TASK = MMStar()

if __name__ == "__main__":
    from evals.cli import main

    main(TASK)
