"""Every benchmark metric, prompt and aggregation on hand-checked cases derived from lmms-eval
0.7.3's definitions; and, where lmms-eval is importable, against its own functions."""

from __future__ import annotations

import random

import pytest

from evals import aggregate
from evals.ai2d import TASK as AI2D
from evals.chartqa import TASK as CHARTQA
from evals.docvqa import TASK as DOCVQA
from evals.mme import TASK as MME
from evals.mmstar import TASK as MMSTAR
from evals.ocrbench import TASK as OCRBENCH
from evals.postprocess import cut_at_stop, strip_reasoning
from evals.scienceqa_img import TASK as SCIENCEQA
from evals.task import Scored
from evals.textvqa import TASK as TEXTVQA
from evals.vqa_metrics import (
    anls,
    exact_match,
    levenshtein,
    mme_yes_no,
    normalize_vqa_answer,
    ocrbench_correct,
    relaxed_correct,
    vqa_accuracy,
)


def needs_lmms_eval():
    return pytest.importorskip("lmms_eval", reason="lmms-eval (the optional `eval` extra) is not installed")


# ---------------------------------------------------------------- VQA normalisation and accuracy (TextVQA)

@pytest.mark.parametrize("raw,normalised", [
    ("Two", "2"), ("none", "0"), ("the red", "red"), ("A dog", "dog"), ("Red.", "red"), ("3.5", "3.5"),
    ("dont", "don't"), ("Im", "im"),                       # upper-case table keys never match lower-cased words
    ("black/white", "black white"),                        # a mark not touching a space becomes a space
    ("black / white", "black white"),                      # touching a space: deleted (then spaces squeezed)
    ("1,000", "1000"), ("it's", "it 's"), ("yes!", "yes"), ("e-mail", "e mail"), ("U.S.A.", "usa"),
    ("somebody'd", "somebodyd"),                           # the reference table's odd entry
    ("  Coca   Cola\n", "coca cola"), ("an apple", "apple"), ("(5)", "5"), ("10 p.m.", "10 pm"),
    ("." * 40, "." * 8),                                   # at most 32 periods removed (re.UNICODE as count)
])
def test_vqa_normalisation(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


@pytest.mark.parametrize("matching,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(matching, expected):
    answers = ["red"] * matching + ["blue"] * (10 - matching)
    assert vqa_accuracy("Red", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("The Coca-Cola.", ["coca cola"] * 10) == 1.0
    assert vqa_accuracy("anything", []) == 0.0


# ---------------------------------------------------------------- relaxed accuracy (ChartQA)

@pytest.mark.parametrize("pred,gold,right", [
    ("10.4", "10", True), ("10.5", "10", True), ("10.6", "10", False), ("9.5", "10", True),
    ("12%", "0.12", True), ("12", "12%", False), ("0", "0", True), ("0.0", "0", False),  # gold 0: text compare
    ("Yes", "yes", True), ("yes ", "yes", False), ("1,000", "1000", False), ("-5", "-5.2", True),
    ("abc", "ABC", True), ("1e3", "1000", True), (" 7", "7", True), ("", "", True), ("nan", "5", False),
])
def test_relaxed_correct(pred, gold, right):
    assert relaxed_correct(pred, gold) is right


def test_chartqa_splits():
    rows = [{"type": "human_test", "answer": "5"}, {"type": "augmented_test", "answer": "5"},
            {"type": "augmented_test", "answer": "red"}]
    scored = [CHARTQA.judge(r, a) for r, a in zip(rows, ["5.1", "6", "Red"])]
    assert [s.score for s in scored] == [1.0, 0.0, 1.0]
    assert CHARTQA.aggregate(rows, scored) == {"relaxed_overall": 2 / 3, "relaxed_human_split": 1.0,
                                               "relaxed_augmented_split": 0.5}


# ---------------------------------------------------------------- ANLS (DocVQA)

@pytest.mark.parametrize("pred,answers,score", [
    ("hello world", ["hello world"], 1.0),
    ("hello wrld", ["hello world"], 1 - 1 / 11),
    ("Hello   World", ["hello world"], 1.0),                  # case and runs of spaces do not count
    ("abc", ["xyz"], 0.0),
    ("abcd", ["abxy"], 0.5),                                  # exactly the threshold: kept
    ("abcde", ["abxyz"], 0.0),                                # 0.4 < 0.5
    ("cat", ["dog", "cat"], 1.0),                             # the best answer counts
    ("", [""], 1.0),
    ("a    bc", ["a bx"], 1 - 1 / 7),                         # quirk: divided by the longer text as given
    ("x", [], 0.0),
])
def test_anls(pred, answers, score):
    assert anls(pred, answers) == pytest.approx(score)


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("flaw", "lawn") == 2


# ---------------------------------------------------------------- OCRBench

@pytest.mark.parametrize("pred,answers,dataset,right", [
    ("It says STOP.", ["stop"], "IIIT5K", True),
    ("ＳＴＯＰ", ["stop"], "IIIT5K", True),                    # full-width folded
    ("sto p", ["stop"], "IIIT5K", False),
    ("x ^ 2 + 1", ["x^2+1"], "HME100k", True),               # maths: spaces ignored
    ("X^2", ["x^2"], "HME100k", False),                      # maths: case kept
    ("abc", "abc", "SVT", True),                             # a single answer as a string
    ("line one\nline two", ["one line"], "SVT", True),       # line breaks read as spaces
    ("anything", [""], "SVT", True),                         # the empty answer is in every text
    ("cat", ["dog", "ca"], "SVT", True),
])
def test_ocrbench(pred, answers, dataset, right):
    assert ocrbench_correct(pred, answers, dataset) is right


def test_ocrbench_divides_by_1000():
    rows = [{"question_type": "Regular Text Recognition"}] * 4
    scored = [Scored(1.0, "", ""), Scored(1.0, "", ""), Scored(0.0, "", ""), Scored(1.0, "", "")]
    assert OCRBENCH.aggregate(rows, scored) == {"ocrbench_accuracy": 0.003}


# ---------------------------------------------------------------- MME

@pytest.mark.parametrize("pred,read", [
    ("Yes", "yes"), ("No.", "no"), ("y", "yes"), ("N", "no"), ("x", "other"), ("Yes, there is", "yes"),
    ("There is no dog", "other"), ("not really", "no"), ("nope", "no"), ("yesno", "yes"), ("noyes", "no"),
    ("I don't know", "other"), ("", "other"), ("  YES.  ", "yes"),
])
def test_mme_yes_no(pred, read):
    assert mme_yes_no(pred) == read


def test_mme_aggregation_pairs():
    cats = ["existence"] * 4 + ["count"] * 2 + ["code_reasoning"] * 2
    qids = ["e1", "e1", "e2", "e2", "c1", "c1", "r1", "r1"]
    scores = [1, 1, 1, 0, 1, 1, 0, 0]
    totals, per_task = aggregate.mme_scores(cats, qids, scores)
    # existence: pair 1 both right (100 + 100), pair 2 one right (50 + 0) -> 125; count: 200
    assert per_task["existence"] == {"score": 125.0, "acc": 75.0, "acc_plus": 50.0, "pairs": 2, "incomplete_pairs": 0}
    assert totals == {"mme_perception_score": 325.0, "mme_cognition_score": 0.0}
    # an incomplete pair (after --limit) counts for accuracy, never for accuracy+
    _, per_task = aggregate.mme_scores(["existence"] * 3, ["e1", "e1", "e2"], [1, 1, 1])
    assert per_task["existence"]["acc_plus"] == 50.0 and per_task["existence"]["incomplete_pairs"] == 1


def test_mme_prompt_and_judge():
    row = {"question": " Is it red? Please answer yes or no. ", "answer": "Yes", "question_id": "a.png",
           "category": "color"}
    assert MME.prompt(row) == "Is it red?\nAnswer the question using a single word or phrase."
    assert MME.judge(row, "Yes, it is.").score == 1.0
    assert MME.judge(row, "maybe") == Scored(0.0, "other", "yes", parsed=False)


# ---------------------------------------------------------------- exact match (AI2D) and ScienceQA

@pytest.mark.parametrize("pred,right", [("(A)", True), ("A.", True), ("a", True), ("A: cat", False), ("A\0", True),
                                        ("A ", False), ("", False)])
def test_exact_match_ignoring_case_and_punctuation(pred, right):
    assert exact_match(pred, "A", ignore_case=True, ignore_punctuation=True) is right


def test_ai2d_prompt_and_scoring():
    row = {"question": "Which is a leaf?", "options": ["root", "leaf", "stem"], "answer": "1"}
    assert AI2D.prompt(row) == ("Which is a leaf?\nA. root\nB. leaf\nC. stem\n"
                                "Answer with the option's letter from the given choices directly.")
    right = ["B", "b", "(B)", "B.", "B. leaf", "  B. leaf", "B:", "<think>A</think>B"]
    wrong = ["B: leaf", "The answer is B", "leaf", "A. B.", "", "C"]
    assert [AI2D.score(row, o).score for o in right] == [1.0] * len(right)
    assert [AI2D.score(row, o).score for o in wrong] == [0.0] * len(wrong)


def test_scienceqa_prompt_and_scoring():
    row = {"hint": "A hint.", "question": "Which is hot?", "choices": ["ice", "fire"], "answer": 1}
    assert SCIENCEQA.prompt(row) == ("Context: A hint.\nWhich is hot?\nA. ice\nB. fire\n"
                                     "Answer with the option's letter from the given choices directly.")
    assert SCIENCEQA.prompt({**row, "hint": ""}).startswith("Which is hot?\nA. ice")
    right = ["B", "b", "B. fire", "B.", "  B  "]
    wrong = ["b. fire", "The answer is B", "B is right", "(B)", "A", "fire", ""]
    assert [SCIENCEQA.score(row, o).score for o in right] == [1.0] * len(right)
    assert [SCIENCEQA.score(row, o).score for o in wrong] == [0.0] * len(wrong)


# ---------------------------------------------------------------- MMStar prompt, judge and aggregation

def test_mmstar_prompt():
    row = {"question": "  Which colour?\nOptions: A: red, B: blue Please answer yes or no.  "}
    assert MMSTAR.prompt(row) == ("Which colour?\nOptions: A: red, B: blue\n"
                                  "Answer with the option's letter from the given choices directly")


def test_mmstar_judge_new_and_legacy():
    row = {"answer": "B"}
    assert MMSTAR.judge(row, "The answer is B") == Scored(1.0, "B", "B")
    assert MMSTAR.judge(row, "no idea") == Scored(0.0, "", "B", parsed=False)
    legacy = MMSTAR.with_options(legacy_extract=True)
    assert legacy.judge(row, "b") == Scored(1.0, "B", "B")
    assert legacy.judge(row, "The answer is B").score == 1.0
    assert legacy.judge(row, "It is B").score == 0.0          # the old rule reads the first character
    assert MMSTAR.judge(row, "It is B").score == 1.0


def test_mmstar_aggregation_is_mean_of_sub_axes():
    cats = ["c1", "c1", "c1", "c2", "c2", "c2"]
    l2s = ["a1", "a1", "a2", "b1", "b1", "b1"]
    scores = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    out, l2 = aggregate.mmstar_scores(cats, l2s, scores)
    assert l2 == {"a1": 0.5, "a2": 1.0, "b1": 1 / 3}
    assert out == {"c1": 0.75, "c2": 1 / 3, "average": (0.5 + 1.0 + 1 / 3) / 3}
    assert aggregate.mean(scores) == 0.5  # plain accuracy differs from "average"


# ---------------------------------------------------------------- prompts of the free-text tasks

def test_free_text_prompts():
    assert TEXTVQA.prompt({"question": "what is THE brand?"}) == \
        "What is the brand?\nAnswer the question using a single word or phrase."
    assert CHARTQA.prompt({"question": "How many bars?"}) == "How many bars?\nAnswer the question with a single word."
    assert DOCVQA.prompt({"question": "What is the date?"}) == \
        "What is the date?\nAnswer the question using a single word or phrase."
    assert OCRBENCH.prompt({"question": " what is written? "}) == "what is written?"
    assert TEXTVQA.stop == ("ASSISTANT:",)  # the yaml's `until`; lmms-eval adds "\n\n" only where none is set


# ---------------------------------------------------------------- what happens to a reply before scoring

def test_cut_at_stop():
    assert cut_at_stop("B\n\nBecause", ["\n\n"]) == "B"
    assert cut_at_stop("x ASSISTANT: y\n\nz", ["ASSISTANT:", "\n\n"]) == "x "
    assert cut_at_stop("abc", ["", "zz"]) == "abc"


@pytest.mark.parametrize("text,clean", [
    ("<think>hmm</think> B", "B"), ("</think>B", "B"), ("<think>unclosed B", "<think>unclosed B"),
    ("a<think>1</think>b<think>2</think>c", "abc"), ("<THINK>x</THINK>B", "<THINK>x</THINK>B"),
    ("<analysis>a</analysis>C", "C"), ("x</think>y</think>z", "z"), ("  plain  ", "plain"),
])
def test_strip_reasoning(text, clean):
    assert strip_reasoning(text) == clean


# ---------------------------------------------------------------- against lmms-eval's own functions

def _texts(n: int, seed: int) -> list[str]:
    pieces = ["Two", "two", "the", "a", " ", "  ", ".", ",", "1,000", "3.5", "10", "5%", "-", "/", " / ", "(",
              ")", "!", "?", "'s", "dont", "Yes", "no", "NO.", "y", "\n", "\t", "ＡＢ", "é", "cat", "Cat", "0",
              "<think>", "</think>", "x^2", "...", ";", "\"", "@", "nan", "e5"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 7))) for _ in range(n)]


def test_free_text_metrics_match_lmms_eval():
    needs_lmms_eval()
    from lmms_eval.api.metrics import anls as ref_anls
    from lmms_eval.api.metrics import exact_match_hf_evaluate
    from lmms_eval.api.reasoning import strip_reasoning_tags
    from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor
    from lmms_eval.tasks.chartqa.utils import relaxed_correctness
    from lmms_eval.tasks.mme.utils import parse_pred_ans
    from lmms_eval.tasks.ocrbench.utils import ocrbench_process_results
    from lmms_eval.tasks.textvqa.utils import textvqa_process_results

    processor = EvalAIAnswerProcessor()
    texts = _texts(3000, seed=0) + ["." * 40, "somebody'd", "black / white"]
    golds = _texts(len(texts), seed=1)
    tags = [["<think>", "</think>"], ["<analysis>", "</analysis>"]]
    for pred, gold in zip(texts, golds):
        assert normalize_vqa_answer(pred) == processor(pred), repr(pred)
        assert relaxed_correct(pred.strip(), gold) == relaxed_correctness(pred.strip(), gold), (pred, gold)
        assert mme_yes_no(pred) == parse_pred_ans(pred), repr(pred)
        assert strip_reasoning(pred) == strip_reasoning_tags(pred, tags), repr(pred)
        assert anls(pred.strip(), [gold, gold[:3]]) == ref_anls([gold, gold[:3]], [pred.strip()])["anls"]
        ref_em = exact_match_hf_evaluate([pred.strip()], [gold], ignore_case=True, ignore_punctuation=True)
        assert exact_match(pred.strip(), gold, True, True) == bool(ref_em["exact_match"]), (pred, gold)
        for dataset in ("IIIT5K", "HME100k"):
            ref = ocrbench_process_results({"answer": [gold], "dataset": dataset, "question_type": "x"}, [pred])
            assert float(ocrbench_correct(pred, [gold], dataset)) == ref["ocrbench_accuracy"]["score"]
    rng = random.Random(3)
    for pred in texts[:500]:
        answers = [rng.choice(["red", "the red", "Red.", "blue", pred]) for _ in range(10)]
        ref = textvqa_process_results({"answers": list(answers), "question_id": 1}, [pred.strip()])
        assert vqa_accuracy(pred.strip(), answers) == ref["exact_match"], (pred, answers)


def test_prompts_and_item_scores_match_lmms_eval():
    needs_lmms_eval()
    from lmms_eval.api.reasoning import strip_reasoning_tags
    from lmms_eval.tasks.ai2d.utils import MultiChoiceRegexFilter, ai2d_doc_to_text
    from lmms_eval.tasks.chartqa.utils import chartqa_doc_to_text, chartqa_process_results
    from lmms_eval.tasks.docvqa.utils import docvqa_doc_to_text
    from lmms_eval.tasks.mme.utils import mme_doc_to_text, mme_process_results
    from lmms_eval.tasks.mmstar.utils import mmstar_doc_to_text
    from lmms_eval.tasks.ocrbench.utils import ocrbench_doc_to_text
    from lmms_eval.tasks.scienceqa.utils import sqa_doc_to_text, sqa_process_results
    from lmms_eval.tasks.textvqa.utils import textvqa_doc_to_text

    mc = {"pre_prompt": "", "post_prompt": "\nAnswer with the option's letter from the given choices directly."}
    short = {"pre_prompt": "", "post_prompt": "\nAnswer the question using a single word or phrase."}
    mmstar = {"question": " Q? Please answer yes or no.\nOptions: A: x, B: y "}
    assert MMSTAR.prompt(mmstar) == mmstar_doc_to_text(mmstar, {**mc, "post_prompt": MMSTAR.post_prompt})
    for hint in ("", "A hint."):
        sqa = {"hint": hint, "question": "Q?", "choices": ["a", "b", "c"], "answer": 2}
        assert SCIENCEQA.prompt(sqa) == sqa_doc_to_text(sqa, {**mc, "format": "default"})
    ai2d = {"question": "Q?", "options": ["a", "b", "c", "d"], "answer": "3"}
    assert AI2D.prompt(ai2d) == ai2d_doc_to_text(ai2d, {**mc, "prompt_format": "mcq"})
    assert TEXTVQA.prompt({"question": "wHat IS it?"}) == textvqa_doc_to_text({"question": "wHat IS it?"}, short)
    assert CHARTQA.prompt({"question": "Q?"}) == chartqa_doc_to_text(
        {"question": "Q?"}, {"pre_prompt": "", "post_prompt": "\nAnswer the question with a single word."})
    assert DOCVQA.prompt({"question": "Q?"}) == docvqa_doc_to_text({"question": "Q?"}, short)
    assert OCRBENCH.prompt({"question": " Q? "}) == ocrbench_doc_to_text({"question": " Q? "}, {})
    mme = {"question": "Is it? Please answer yes or no.", "answer": "No", "category": "OCR", "question_id": "q"}
    assert MME.prompt(mme) == mme_doc_to_text(mme, short)

    ai2d_filter = MultiChoiceRegexFilter(regex_pattern=r"([A-Z])\.", group_select=0, ignore_case=True,
                                         ignore_punctuation=True)
    from lmms_eval.api.metrics import exact_match_hf_evaluate

    for output in _texts(1000, seed=5) + ["B. leaf", " C.", "(D)", "D:"]:
        out = output.strip()
        assert SCIENCEQA.judge(sqa, out).score == sqa_process_results(sqa, [out])["exact_match"], repr(out)
        filtered = ai2d_filter.apply([[out]], [ai2d])[0]
        cleaned = strip_reasoning_tags(filtered, [["<think>", "</think>"], ["<analysis>", "</analysis>"]]).strip()
        ref = exact_match_hf_evaluate([cleaned], ["D"], ignore_case=True, ignore_punctuation=True)
        assert AI2D.score(ai2d, out).score == ref["exact_match"], repr(out)
        chart = {"type": "human_test", "answer": "0.5"}
        assert CHARTQA.judge(chart, out).score == chartqa_process_results(chart, [out])["relaxed_overall"]
        assert MME.judge(mme, out).score == mme_process_results(mme, [out])["mme_perception_score"]["score"]


def test_aggregations_match_lmms_eval():
    needs_lmms_eval()
    from lmms_eval.tasks.mme.utils import mme_aggregate_results
    from lmms_eval.tasks.mmstar.utils import mmstar_aggregate_results

    rng = random.Random(7)
    axes = [(c, l2) for c, l2s in aggregate.MMSTAR_CATEGORIES.items() for l2 in l2s]
    items = [(*rng.choice(axes), float(rng.random() < 0.4)) for _ in range(500)]
    cats, l2s, scores = zip(*items)
    mine, _ = aggregate.mmstar_scores(cats, l2s, scores)
    results = [{"question_id": i, "l2_category": l2, "score": s} for i, (_, l2, s) in enumerate(items)]
    assert mine["average"] == mmstar_aggregate_results(results)
    for category in aggregate.MMSTAR_CATEGORIES:
        assert mine[category] == mmstar_aggregate_results([r for r, (c, _, _) in zip(results, items) if c == category])

    subtasks = [*aggregate.MME_PERCEPTION, *aggregate.MME_COGNITION]
    rows = []
    for i in range(300):
        category = rng.choice(subtasks)
        rows += [(category, f"{category}/{i}", float(rng.random() < 0.6)) for _ in range(2)]
    totals, _ = aggregate.mme_scores(*zip(*rows))
    for key, names in (("mme_perception_score", aggregate.MME_PERCEPTION),
                       ("mme_cognition_score", aggregate.MME_COGNITION)):
        ref = mme_aggregate_results([{"question_id": q, "category": c, "score": s} for c, q, s in rows if c in names])
        assert totals[key] == ref
