"""Reading the chosen letter out of a multiple-choice answer, by lmms-eval 0.7.3's rules.

    extract_letter("The correct answer is (B).")          # -> "B"   (lmms-eval >= 0.7.2)
    extract_letter("I think", choices="ABCD")              # -> ""    (nothing recognisable: wrong)
    legacy_extract("(c) because ...")                      # -> "C"   (lmms-eval <= 0.7.1, MMStar's rule)
    legacy_correct("apple", "A")                           # -> True  (the old rule reads the first character)

Reproduces `lmms_eval/tasks/_task_utils/mcq_extract.py::extract_mcq_answer` (used by MMStar's
`exact_match` since 0.7.2) and the older MMStar rule, quirks included, because scores from this
harness are compared with published lmms-eval numbers. Checked on many hand-made outputs and,
where lmms-eval is importable, against its own functions (tests/test_evals_mcq.py).

The current rule collects candidate letters in several formats, each with a rank, and returns the
letter of the highest rank; within a rank the occurrence nearest the end wins:

    rank  format                                  where it counts
    10    a standalone letter opening the answer  "B", "B. cat", "B) cat"  (not "Because")
     9    a standalone letter closing the answer  "... so B", "cat (B"
     7    a letter after an answer phrase         "the answer is C" (any later capital A-D after
                                                  the phrase's first occurrence counts, the last wins)
     6    "(X)"   5 "X."   4 "X:"   3 "X)"   2 "X "   (last occurrence of each letter)
     0    any capital choice letter anywhere      only when nothing above matched

Before matching, the answer is stripped of whitespace and then of , . ! ? ; : ' " at both ends,
one character class after the other (so ".,A" keeps its comma), and padded with a space at each
end. Matching is case-sensitive except for the phrases.
"""

from __future__ import annotations

from typing import Iterable

DEFAULT_CHOICES = "ABCDEFGH"
MMSTAR_CHOICES = "ABCD"

# Stripped from both ends, in this order, one after the other (lmms-eval's loop does the same).
_EDGE_PUNCTUATION = (",", ".", "!", "?", ";", ":", "'", '"')

# "the answer is X" and friends; lower-case, matched on the lower-cased answer. Several may match
# the same text ("the answer is" contains "answer is"): they all add candidates.
_ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is",
    "옵션", "정답은", "답은", "답:",      # Korean
    "答案是", "答案为", "选",             # Chinese
    "答えは",                           # Japanese
)

START, END, PHRASE, PARENTHESES, PERIOD, COLON, RIGHT_PAREN, SPACE, FALLBACK = 10, 9, 7, 6, 5, 4, 3, 2, 0
# Letter followed or surrounded by punctuation: (rank, text before the letter, text after it).
_MARKED = ((PARENTHESES, "(", ")"), (PERIOD, "", "."), (COLON, "", ":"), (RIGHT_PAREN, "", ")"), (SPACE, "", " "))


def _padded(response: str) -> str:
    text = response.strip()
    for mark in _EDGE_PUNCTUATION:
        text = text.strip(mark)
    return f" {text} "


def extract_letter(response: str, choices: Iterable[str] = DEFAULT_CHOICES) -> str:
    """The chosen letter (upper case), or "" when the answer holds none of `choices`.

    `choices` are single characters; MMStar passes "ABCD".
    """
    if not response or not response.strip():
        return ""
    letters = list(choices)
    text = _padded(response)
    core = text.strip()
    best: tuple[int, int, str] | None = None  # (rank, position, letter): the largest wins

    def offer(rank: int, position: int, letter: str) -> None:
        nonlocal best
        if best is None or (rank, position) > best[:2]:
            best = (rank, position, letter)

    for letter in letters:
        for rank, before, after in _MARKED:
            found = text.rfind(f"{before}{letter}{after}")
            if found != -1:
                offer(rank, found, letter)
    lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lower.find(phrase)  # the phrase's first occurrence only
        if at != -1:
            for letter in letters:
                found = text.find(letter, at + len(phrase))  # first occurrence after it
                if found != -1:
                    offer(PHRASE, found, letter)
    for letter in letters:
        # "standalone": the next (previous) character is not a letter, so "Because" is no B.
        if core.startswith(letter) and (len(core) == 1 or not core[1].isalpha()):
            offer(START, 0, letter)
        if core.endswith(letter) and (len(core) == 1 or not core[-2].isalpha()):
            offer(END, len(text) - 1, letter)
    if best is None:
        for letter in letters:
            found = text.rfind(letter)
            if found != -1:
                offer(FALLBACK, found, letter)
    return best[2] if best is not None else ""


# ---------------------------------------------------------------- lmms-eval <= 0.7.1 (MMStar's own rule)

_LEGACY_PREFIXES = ("(", "option ", "the answer is ")


def _legacy_text(response: str) -> str:
    return response.lower().replace("\n", " ").strip()


def legacy_correct(response: str, gold: str) -> bool:
    """MMStar's original rule: the gold letter (any case) is the first character of the answer,
    or the character right after "(", "option " or "the answer is " opening it."""
    answer, text = _legacy_text(gold), _legacy_text(response)
    if not text:
        return False  # upstream: an IndexError, caught, scores 0
    if answer == text[0]:
        return True
    for prefix in _LEGACY_PREFIXES:
        if text.startswith(prefix):
            # upstream indexes past the prefix and scores 0 when the answer ends there
            return len(text) > len(prefix) and answer == text[len(prefix)]
    return False


def legacy_extract(response: str, choices: Iterable[str] = MMSTAR_CHOICES) -> str:
    """The letter the old rule reads (upper case), or "" when it reads none of `choices`.

    For choices that are not "(", "o" or "t" (A-D), `legacy_extract(r) == gold` exactly when
    `legacy_correct(r, gold)`: the prefixes can only apply when the first character is no choice.
    """
    lowered = [c.lower() for c in choices]
    text = _legacy_text(response)
    if not text:
        return ""
    if text[0] in lowered:
        return text[0].upper()
    for prefix in _LEGACY_PREFIXES:
        if text.startswith(prefix):
            read = text[len(prefix):len(prefix) + 1]
            return read.upper() if read in lowered else ""
    return ""
