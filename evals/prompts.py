"""The text lmms-eval 0.7.3's tasks put around a question, byte for byte, defined once.

    SHORT_ANSWER                                  # TextVQA, DocVQA, MME: "\\nAnswer the question using ..."
    SINGLE_WORD                                   # ChartQA
    OPTION_LETTER                                 # ScienceQA-IMG, AI2D (MMStar's lacks the final period)
    without_yes_no(" Is it red? Please answer yes or no. ")   # "Is it red?" (MME, MMStar)
    with_options("Which is hot?", ["ice", "fire"])            # "Which is hot?\\nA. ice\\nB. fire"
    answer_letter(["ice", "fire"], "1")                       # "B": the letter of the answer's index

The post-prompts are the `lmms_eval_specific_kwargs: default` values of each task's yaml; a task
names the one it uses as its `post_prompt` (evals/task.py), which its prompt ends with. Where
lmms-eval is installed, tests/test_evals_metrics.py checks every prompt against lmms-eval's own
`doc_to_text`.
"""

from __future__ import annotations

from typing import Sequence

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
SINGLE_WORD = "\nAnswer the question with a single word."
OPTION_LETTER = "\nAnswer with the option's letter from the given choices directly."

# Removed from a question before a post-prompt is added (lmms-eval mme/utils.py::mme_doc_to_text,
# mmstar/utils.py::replace_prompt).
YES_NO_SUFFIX = " Please answer yes or no."


def without_yes_no(question: str) -> str:
    """The question stripped, without lmms-eval's yes/no instruction (the post-prompt replaces it)."""
    return question.strip().replace(YES_NO_SUFFIX, "")


def option_letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def answer_letter(options: Sequence[str], answer: int | str) -> str:
    """The letter of the gold option, given as its index (AI2D: as text)."""
    return option_letters(len(options))[int(answer)]


def with_options(question: str, options: Sequence[str]) -> str:
    """The question, then one "A. text" line per option (lmms-eval's ScienceQA and AI2D format)."""
    block = "\n".join(f"{letter}. {text}" for letter, text in zip(option_letters(len(options)), options))
    return f"{question}\n{block}"
