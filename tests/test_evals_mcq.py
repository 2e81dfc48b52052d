"""The multiple-choice letter extractor (lmms-eval >= 0.7.2) and MMStar's legacy rule.

Expected letters are derived by hand from the rules (ranks: start 10, end 9, phrase 7, "(X)" 6,
"X." 5, "X:" 4, "X)" 3, "X " 2, fallback 0; last occurrence wins within a rank). Where lmms-eval
is importable, its own extractor is also run on these and on generated outputs.
"""

from __future__ import annotations

import random

import pytest

from evals.mcq_extract import extract_letter, legacy_correct, legacy_extract

ABCD = "ABCD"

# (model output, letter read with choices A-D, why)
CASES = [
    ("B", "B", "a bare letter"),
    ("B.", "B", "trailing period stripped, then a bare letter"),
    ("  C  ", "C", "whitespace stripped"),
    ("D:", "D", "':' stripped at the end"),
    ("(C)", "C", "parentheses"),
    ("C)", "C", "a standalone letter opening the answer: ')' is no letter"),
    ("B. a red square", "B", "letter + period at the start"),
    ("B) a red square", "B", "start rank"),
    ("B or C", "B", "start (10) beats end (9)"),
    ("The answer is (C).", "C", "phrase, and '(C)'"),
    ("The answer is C", "C", "phrase and end agree"),
    ("The correct answer is B, not C", "C", "quirk: the standalone closing C (end, 9) beats the phrase (7)"),
    ("The answer is A because B is wrong", "B", "quirk: any later capital after the phrase counts, the last wins"),
    ("the answer is b", "", "case-sensitive: no capital letter anywhere"),
    ("I think it's D", "D", "end: a standalone closing letter"),
    ("Both B and C are wrong, the answer is A", "A", "end"),
    ("A cat sits on the mat", "A", "quirk: the article 'A' opens the answer"),
    ("Apple", "A", "fallback: no format matched, a capital A is in the text"),
    ("Because", "B", "fallback: 'B' opening a word is not standalone, but fallback finds it"),
    ("ABCD", "D", "'D ' with the padding space (space rank); no letter is standalone"),
    ("Option B: red", "B", "'B:' (colon rank)"),
    ("(A) or (B)", "B", "two parentheses: the later wins"),
    ("A. cat B. dog", "A", "start beats period"),
    ("answer: C", "C", "end"),
    (".,A", "A", "edge strips run mark by mark: ',' is kept, then 'A' closes the answer"),
    ("我选B", "B", "Chinese phrase '选' (no end: '选' is a letter to isalpha)"),
    ("答案是C", "C", "Chinese phrase"),
    ("정답은 D", "D", "Korean phrase (and end)"),
    ("E", "", "E is not a choice of MMStar"),
    ("I", "", "no choice letter at all"),
    ("", "", "empty"),
    ("   ", "", "blank"),
    ("red", "", "no capital letter"),
    ("B\n\nExplanation: A is wrong", "B", "start"),
    ("The image shows a circle. D", "D", "end beats fallback"),
    ("Answer: (D) square", "D", "parentheses"),
    ("C: square, D: circle", "C", "start"),
    ("square (D", "D", "end: '(' is no letter"),
    ("It is B.", "B", "end after stripping the period"),
    ("I choose A and then C", "C", "end; the phrase 'i choose' would also give the last capital, C"),
    ("Bx", "B", "fallback (B followed by a letter is not standalone)"),
]


@pytest.mark.parametrize("output,letter,why", CASES, ids=[c[0][:30] or "<empty>" for c in CASES])
def test_extract_letter_hand_checked(output, letter, why):
    assert extract_letter(output, ABCD) == letter, why


def test_default_choices_go_to_h():
    assert extract_letter("E") == "E"
    assert extract_letter("the answer is H") == "H"
    assert extract_letter("E", "ABCD") == ""


LEGACY = [
    # (output, gold, correct under lmms-eval <= 0.7.1)
    ("B", "B", True), ("b", "B", True), ("Banana", "B", True), ("(b) cat", "B", True), ("option c", "C", True),
    ("Option C", "C", True), ("The answer is D.", "D", True), ("the answer is: D", "D", False),
    ("I pick A", "A", False), ("", "A", False), ("(", "A", False), ("  a  ", "A", True), ("\nA", "A", True),
    ("A", " a\n", True), ("C", "B", False), ("(C)", "B", False), ("apple", "A", True), ("option ", "A", False),
]


@pytest.mark.parametrize("output,gold,correct", LEGACY)
def test_legacy_rule_hand_checked(output, gold, correct):
    assert legacy_correct(output, gold) is correct


def test_legacy_extract_reads_what_the_rule_compares():
    assert legacy_extract("The answer is d") == "D"
    assert legacy_extract("apple") == "A"
    assert legacy_extract("(x)") == ""
    assert legacy_extract("zebra") == ""
    assert legacy_extract("") == ""
    # for A-D, extract == gold exactly when the rule says correct
    for output in _generated(2000, seed=1):
        for gold in ABCD:
            assert (legacy_extract(output) == gold) == legacy_correct(output, gold), (output, gold)


# ---------------------------------------------------------------- against lmms-eval itself

_FRAGMENTS = ["A", "B", "C", "D", "E", "a", "b", "(", ")", ".", ":", ",", "!", "?", "'", '"', ";", " ", " ", "\n",
              "the answer is ", "The correct answer is ", "answer is", "option ", "Option ", "I choose ", "选",
              "答案是", "정답은 ", "(B)", "C.", "D:", "A)", "because ", "cat", "Both", "Apple", "<think>", "é",
              "İ"]


def _generated(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(0, 8))) for _ in range(n)]


def test_extractor_matches_lmms_eval():
    pytest.importorskip("lmms_eval", reason="lmms-eval (the optional `eval` extra) is not installed")
    from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer

    outputs = [c[0] for c in CASES] + _generated(5000, seed=0)
    for output in outputs:
        assert extract_letter(output, ABCD) == extract_mcq_answer(output, choices=list(ABCD)), repr(output)
        assert extract_letter(output) == extract_mcq_answer(output), repr(output)


def test_mmstar_exact_match_matches_lmms_eval():
    pytest.importorskip("lmms_eval", reason="lmms-eval (the optional `eval` extra) is not installed")
    from lmms_eval.tasks.mmstar.utils import exact_match

    from evals.mmstar import TASK

    for output in [c[0] for c in CASES] + _generated(1000, seed=2):
        for gold in ABCD:
            mine = TASK.judge({"answer": gold}, output.strip()).score
            assert mine == exact_match(output.strip(), gold), (output, gold)
