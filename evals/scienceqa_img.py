"""ScienceQA-IMG: science multiple choice with an image (2-5 options), scored as lmms-eval 0.7.3 does.

    python -m evals.scienceqa_img CKPT                   # lmms-lab-encoder/ScienceQA, ScienceQA-IMG, test
    python -m evals.scienceqa_img CKPT --data scienceqa_img.parquet --limit 200

Prompt: "Context: <hint>\\n" when there is a hint, the question, the options as "A. ..." lines,
then "\\nAnswer with the option's letter from the given choices directly.". Scoring (the LLaVA rule
lmms-eval keeps): right when the whole answer is the letter (any case), or when it starts with an
upper-case letter followed by "." and that letter is the gold one ("B. 12 m"); otherwise wrong.
Score: `exact_match`, the mean over items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evals.prompts import OPTION_LETTER, answer_letter, with_options
from evals.task import Scored, Task


@dataclass(frozen=True)
class ScienceQAImg(Task):
    name: str = "scienceqa_img"
    lmms_task: str = "scienceqa_img"
    hub_id: str = "lmms-lab-encoder/ScienceQA"
    hub_config: str | None = "ScienceQA-IMG"
    split: str = "test"
    columns: tuple[str, ...] = ("question", "choices", "answer", "hint")
    post_prompt: str = OPTION_LETTER
    primary: str = "exact_match"
    mean_metrics: tuple[str, ...] = ("exact_match",)  # aggregation: mean
    schema_hint: str = "ScienceQA's schema: image, question, choices (list), answer (index), hint"
    scoring: str = "LLaVA's: answer == letter (any case), or '<Upper>.' opening the answer with the gold letter"

    def question(self, row: dict[str, Any]) -> str:
        hint = row["hint"]
        # As lmms-eval: an empty hint adds nothing (and a missing one, None, would print as "None").
        context = f"Context: {hint}\n" if hint else hint
        return f"{context}{with_options(row['question'], row['choices'])}"

    def judge(self, row: dict[str, Any], answer: str) -> Scored:
        gold = answer_letter(row["choices"], row["answer"])
        pred = answer.strip()
        if pred.lower() == gold.lower():
            return Scored(1.0, pred.upper(), gold)
        if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
            return Scored(float(pred[0].lower() == gold.lower()), pred[0], gold)
        return Scored(0.0, "", gold, parsed=False)


TASK = ScienceQAImg()

if __name__ == "__main__":
    from evals.cli import main

    main(TASK)
