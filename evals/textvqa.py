"""TextVQA (validation): questions about text in photos, VQA accuracy as lmms-eval 0.7.3 scores it.

    python -m evals.textvqa CKPT                  # lmms-lab-encoder/textvqa, validation (lmms-eval: textvqa_val)
    python -m evals.textvqa CKPT --data textvqa.parquet

Prompt: the question with `str.capitalize()` (first letter upper, the rest lower, as lmms-eval
does), then "\\nAnswer the question using a single word or phrase."; generation stops at
"ASSISTANT:" only (lmms-eval's `until` for the task; not at "\\n\\n", so "stop\\n\\nThe sign is red."
is scored whole, as lmms-eval does). Scoring: the answer and the 10 annotators' answers are normalised as the official
VQA evaluation does (evals/vqa_metrics.py); accuracy = the mean over the 10 leave-one-out subsets of
min(1, matches / 3). Score: `exact_match`, the mean over items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evals.prompts import SHORT_ANSWER
from evals.task import Scored, Task
from evals.vqa_metrics import normalize_vqa_answer, vqa_accuracy


@dataclass(frozen=True)
class TextVQA(Task):
    name: str = "textvqa"
    lmms_task: str = "textvqa_val"
    hub_id: str = "lmms-lab-encoder/textvqa"
    split: str = "validation"
    columns: tuple[str, ...] = ("question_id", "question", "answers")
    id_column: str = "question_id"
    # lmms-eval's textvqa template sets `until: ["ASSISTANT:"]`, so its default "\n\n" does not apply
    stop: tuple[str, ...] = ("ASSISTANT:",)
    post_prompt: str = SHORT_ANSWER
    primary: str = "exact_match"
    mean_metrics: tuple[str, ...] = ("exact_match",)  # aggregation: mean
    schema_hint: str = "TextVQA's schema: question_id, question, image, answers (10 strings)"
    scoring: str = "VQA accuracy (EvalAI normalisation; mean over leave-one-out of min(1, matches/3))"

    def question(self, row: dict[str, Any]) -> str:
        return row["question"].capitalize()

    def judge(self, row: dict[str, Any], answer: str) -> Scored:
        answers = list(row["answers"] or [])
        return Scored(vqa_accuracy(answer.strip(), answers), normalize_vqa_answer(answer.strip()), answers)


TASK = TextVQA()

if __name__ == "__main__":
    from evals.cli import main

    main(TASK)
