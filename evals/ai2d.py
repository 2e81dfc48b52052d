"""AI2D: multiple choice on science diagrams (4 options), scored as lmms-eval 0.7.3 does.

    python -m evals.ai2d CKPT                     # lmms-lab-encoder/ai2d, test
    python -m evals.ai2d CKPT --data ai2d.parquet

Prompt: the question, the options as "A. ..." lines, then "\\nAnswer with the option's letter
from the given choices directly.". Scoring: lmms-eval's "flexible-extract" filter reads an
upper-case letter followed by "." at the start of the answer ("B. a leaf" -> "B"); otherwise the
whole answer is kept. That is compared with the gold letter ignoring case and ASCII punctuation,
so "B", "b", "(B)" and "B." are right, "B: a leaf" and "The answer is B" are wrong.
Score: `exact_match` (lmms-eval reports it as "exact_match,flexible-extract").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from evals.postprocess import strip_reasoning
from evals.prompts import OPTION_LETTER, answer_letter, with_options
from evals.task import Scored, Task
from evals.vqa_metrics import exact_match

_LEADING_LETTER = re.compile(r"^\s*([A-Z])\.")


@dataclass(frozen=True)
class AI2D(Task):
    name: str = "ai2d"
    lmms_task: str = "ai2d"
    hub_id: str = "lmms-lab-encoder/ai2d"
    split: str = "test"
    columns: tuple[str, ...] = ("question", "options", "answer")
    post_prompt: str = OPTION_LETTER
    primary: str = "exact_match"
    mean_metrics: tuple[str, ...] = ("exact_match",)  # aggregation: mean
    schema_hint: str = "AI2D's schema: image, question, options (list), answer (index as text)"
    scoring: str = "flexible-extract (leading 'X.'), then exact match ignoring case and punctuation"

    def question(self, row: dict[str, Any]) -> str:
        return with_options(row["question"], row["options"])

    def score(self, row: dict[str, Any], output: str) -> Scored:
        # The task's filter sees the raw answer; reasoning blocks are removed after it.
        found = _LEADING_LETTER.match(output)
        return self.judge(row, found.group(1) if found else strip_reasoning(output))

    def judge(self, row: dict[str, Any], answer: str) -> Scored:
        gold = answer_letter(row["options"], row["answer"])
        pred = answer.strip()
        right = exact_match(pred, gold, ignore_case=True, ignore_punctuation=True)
        return Scored(float(right), pred, gold, parsed=bool(pred))


TASK = AI2D()

if __name__ == "__main__":
    from evals.cli import main

    main(TASK)
