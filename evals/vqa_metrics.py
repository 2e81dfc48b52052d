"""Free-text answer metrics, as lmms-eval 0.7.3 defines them (quirks included).

    vqa_accuracy("Two", ["2"] * 10)              # TextVQA: 1.0 (EvalAI normalisation, 10 annotators)
    relaxed_correct("10.4", "10")                # ChartQA: True (numbers within 5%, text exact)
    anls("hello wrld", ["hello world"])          # DocVQA: 0.909 (1 - edit distance / length, 0 below 0.5)
    ocrbench_correct("It says STOP.", ["stop"], "IIIT5K")   # OCRBench: True (answer contained)
    mme_yes_no("Yes, it is.")                    # MME: "yes" ("yes" / "no" / "other")
    exact_match("(A)", "A", ignore_case=True, ignore_punctuation=True)   # AI2D's final comparison: True

Each function says which lmms-eval code it reproduces. They are pure functions of strings, tested
on hand-checked cases derived from the definitions (tests/test_evals_metrics.py) and, where
lmms-eval is importable, against lmms-eval's own functions.
"""

from __future__ import annotations

import re
import statistics
import string
from typing import Sequence

# ---------------------------------------------------------------- VQA accuracy (TextVQA)
# The answer normalisation of the official VQA evaluation (EvalAI), as in lmms-eval's
# `_task_utils/vqa_eval_metric.py::EvalAIAnswerProcessor`.

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Removed (or turned into a space, see _strip_punctuation). "'" and "." are not in the list.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")
# A period not followed by a digit. The reference passes re.UNICODE (= 32) where `count` goes,
# so at most 32 periods are removed: reproduced with count=32.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX_REMOVALS = 32

# Word -> contraction, applied to whole (lower-case) words. The reference table's upper-case keys
# ("Im", "Ive", "Id've", "I'dve") can never match lower-cased words and its identity entries
# ("let's", "she's") change nothing, so they are left out; its odd "somebody'd" -> "somebodyd"
# is kept. One pair per line: what the answer says, what it becomes.
_CONTRACTIONS = dict(line.split() for line in """
    aint ain't
    arent aren't
    cant can't
    couldve could've
    couldnt couldn't
    couldn'tve couldn't've
    couldnt've couldn't've
    didnt didn't
    doesnt doesn't
    dont don't
    hadnt hadn't
    hadnt've hadn't've
    hadn'tve hadn't've
    hasnt hasn't
    havent haven't
    hed he'd
    hed've he'd've
    he'dve he'd've
    hes he's
    howd how'd
    howll how'll
    hows how's
    isnt isn't
    itd it'd
    itd've it'd've
    it'dve it'd've
    itll it'll
    maam ma'am
    mightnt mightn't
    mightnt've mightn't've
    mightn'tve mightn't've
    mightve might've
    mustnt mustn't
    mustve must've
    neednt needn't
    notve not've
    oclock o'clock
    oughtnt oughtn't
    ow's'at 'ow's'at
    'ows'at 'ow's'at
    'ow'sat 'ow's'at
    shant shan't
    shed've she'd've
    she'dve she'd've
    shouldve should've
    shouldnt shouldn't
    shouldnt've shouldn't've
    shouldn'tve shouldn't've
    somebody'd somebodyd
    somebodyd've somebody'd've
    somebody'dve somebody'd've
    somebodyll somebody'll
    somebodys somebody's
    someoned someone'd
    someoned've someone'd've
    someone'dve someone'd've
    someonell someone'll
    someones someone's
    somethingd something'd
    somethingd've something'd've
    something'dve something'd've
    somethingll something'll
    thats that's
    thered there'd
    thered've there'd've
    there'dve there'd've
    therere there're
    theres there's
    theyd they'd
    theyd've they'd've
    they'dve they'd've
    theyll they'll
    theyre they're
    theyve they've
    twas 'twas
    wasnt wasn't
    wed've we'd've
    we'dve we'd've
    weve we've
    werent weren't
    whatll what'll
    whatre what're
    whats what's
    whatve what've
    whens when's
    whered where'd
    wheres where's
    whereve where've
    whod who'd
    whod've who'd've
    who'dve who'd've
    wholl who'll
    whos who's
    whove who've
    whyll why'll
    whyre why're
    whys why's
    wont won't
    wouldve would've
    wouldnt wouldn't
    wouldnt've wouldn't've
    wouldn'tve wouldn't've
    yall y'all
    yall'll y'all'll
    y'allll y'all'll
    yall'd've y'all'd've
    y'alld've y'all'd've
    y'all'dve y'all'd've
    youd you'd
    youd've you'd've
    you'dve you'd've
    youll you'll
    youre you're
    youve you've
""".split("\n") if line.strip())


def _strip_punctuation(text: str) -> str:
    # A mark touching a space (or any text with a digit comma) is deleted; otherwise it becomes a
    # space, so "black/white" -> "black white" but "black / white" -> "black  white". The test
    # looks at the text as it came in, mark by mark.
    digit_comma = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        delete = f"{mark} " in text or f" {mark}" in text or digit_comma
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_REMOVALS)


def normalize_vqa_answer(answer: str) -> str:
    """EvalAI's normalisation: lower case, punctuation, number words -> digits, no articles,
    contractions restored."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy: for each of the annotators' answers left out in turn, min(1, matches among
    the others / 3); the mean of those. With 10 answers: 4 or more matching -> 1.0, 3 -> 0.9,
    2 -> 0.6, 1 -> 0.3 (the often quoted min(1, matches / 3) is this before the averaging).
    No answers -> 0.0."""
    if not answers:
        return 0.0
    pred = normalize_vqa_answer(prediction)
    golds = [normalize_vqa_answer(a) for a in answers]
    matches = sum(g == pred for g in golds)
    # leaving out a matching answer removes one match; leaving out another removes none
    per_left_out = [min(1.0, (matches - (g == pred)) / 3) for g in golds]
    return statistics.mean(per_left_out)  # the reference's mean (exact, correctly rounded)


# ---------------------------------------------------------------- relaxed accuracy (ChartQA)

def _number(text: str) -> float | None:
    # Python's float() rules, as the reference: " 12 ", "1e3", "1_000", "inf" parse; "1,000" does not.
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA's relaxed accuracy (lmms-eval `chartqa/utils.py::relaxed_correctness`): when both
    parse as numbers ("12%" is 0.12) and the target is not 0, within 5% of the target; otherwise
    a case-insensitive exact match."""
    pred, gold = _number(prediction), _number(target)
    if pred is not None and gold:  # a target of 0 falls through to the text comparison
        return abs(pred - gold) / abs(gold) <= max_relative_change
    return prediction.lower() == target.lower()


# ---------------------------------------------------------------- ANLS (DocVQA)

def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        current = [j]
        for i, ca in enumerate(a, 1):
            current.append(previous[i - 1] if ca == cb else 1 + min(previous[i - 1], previous[i], current[-1]))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one question (lmms-eval `api/metrics.py::anls`):
    1 - the smallest distance / length over the answers, 0 when that is below `threshold`.

    Distances compare lower-cased texts with runs of whitespace made single spaces; the length
    that divides is the longer of the two texts as given (upper-cased, as the reference does).
    """
    if not answers:
        return 0.0
    squeeze = lambda s: " ".join(s.strip().lower().split())  # noqa: E731
    pred = squeeze(prediction)
    distances = []
    for answer in answers:
        length = max(len(answer.upper()), len(prediction.upper()))
        distances.append(0.0 if length == 0 else levenshtein(squeeze(answer), pred) / length)
    score = 1 - min(distances)
    return 0.0 if score < threshold else score


# ---------------------------------------------------------------- OCRBench

def _fold_fullwidth(text: str) -> str:
    """Full-width ASCII (U+FF01-FF5E) -> ASCII and the ideographic space -> space; nothing else."""
    return "".join(chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else " " if c == "\u3000" else c
                   for c in text)


def ocrbench_correct(prediction: str, answers: str | Sequence[str], dataset: str) -> bool:
    """OCRBench (lmms-eval `ocrbench/utils.py`): an answer is contained in the prediction.

    Handwritten maths (dataset "HME100k") ignores all spaces and line breaks, case-sensitively;
    the rest compares lower case, full-width characters folded, line breaks as spaces.
    """
    answers = [answers] if isinstance(answers, str) else list(answers)
    if dataset == "HME100k":
        squash = lambda s: s.strip().replace("\n", " ").replace(" ", "")  # noqa: E731
    else:
        squash = lambda s: _fold_fullwidth(s).lower().strip().replace("\n", " ")  # noqa: E731
    pred = squash(prediction.strip())
    return any(squash(a) in pred for a in answers)


# ---------------------------------------------------------------- MME

def mme_yes_no(prediction: str) -> str:
    """MME's reading of an answer (lmms-eval `mme/utils.py::parse_pred_ans`): "yes", "no" or
    "other". Periods are dropped; "y"/"n" alone count; otherwise "yes" (then "no") within the
    first four characters."""
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_gold(answer: str) -> str:
    """The gold label ("yes"/"no") of an MME row; anything else is a data error."""
    gold = answer.lower().strip().replace(".", "")
    if gold not in ("yes", "no"):
        raise ValueError(f"MME answer must be Yes or No, got {answer!r}")
    return gold


# ---------------------------------------------------------------- exact match (AI2D)

def exact_match(prediction: str, reference: str, ignore_case: bool = False, ignore_punctuation: bool = False) -> bool:
    """lmms-eval's `exact_match` metric (HF evaluate's): optionally lower-cased and without ASCII
    punctuation, then equal. The reference holds the strings in numpy arrays, which drop trailing
    NUL characters: so does this."""
    pred, ref = prediction.rstrip("\0"), reference.rstrip("\0")
    if ignore_case:
        pred, ref = pred.lower(), ref.lower()
    if ignore_punctuation:
        table = str.maketrans("", "", string.punctuation)
        pred, ref = pred.translate(table), ref.translate(table)
    return pred == ref
