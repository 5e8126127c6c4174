"""The tasks' native metrics against hand-computed cases and values published or produced by the reference code."""

import json
import math
from pathlib import Path

import pytest

from llava_accel.metrics.choice import choice_metric, lmms_eval_exact_match, parse_letter
from llava_accel.metrics.cider import cider, cider_d
from llava_accel.metrics.ptb import tokenize_corpus
from llava_accel.metrics.vqa import normalize_answer, vqa_accuracy, vqa_metric
from llava_accel.tasks import Sample

FIXTURES = Path(__file__).parent / "fixtures"


# -- VQA accuracy -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, normal", [
    ("The answer is Two.", "answer is 2"),  # case, article, number word, final period
    ("A dog", "dog"), ("an apple", "apple"), ("the end", "end"),
    ("NIKON.", "nikon"), ("stop!", "stop"), ("yes, it is", "yes it is"), ("why?", "why"),
    ("3.5", "3.5"), ("ten", "10"), ("none", "0"),  # a period before a digit stays
    ("hello-world", "hello world"), ("left - right", "left right"),  # mark inside a word -> space; spaced -> gone
    ("dont", "don't"), ("its the mans hat", "its mans hat"), ("man's", "man 's"),
    ("  multi\nline\tanswer ", "multi line answer"),
])
def test_evalai_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_accuracy_leave_one_out_by_hand():
    # 3 of 10 say nikon: each of those 3 subsets has 2 others -> 2/3; the 7 others have 3 -> 1. (3*2/3 + 7) / 10
    assert vqa_accuracy("Nikon.", ["nikon"] * 3 + ["canon"] * 7) == pytest.approx(0.9)
    # one 'two' among 10 and the prediction '2': that subset has 0 matches, the 9 others 1/3 each -> 0.3
    assert vqa_accuracy("2", ["two"] + ["three"] * 9) == pytest.approx(0.3)
    # articles and case ignored: 'Stop sign' equals 'the stop sign' (4 of 10): 4 * 1 + 6 * 1 (4 >= 3 matches)
    assert vqa_accuracy("Stop sign", ["the stop sign"] * 4 + ["stop"] * 6) == pytest.approx(1.0)
    assert vqa_accuracy("stop sign", ["the stop sign"] * 2 + ["stop"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("banana", ["nikon"] * 10) == 0.0


def test_vqa_metric_averages_samples_with_answers():
    samples = [Sample(None, "q", ["nikon"] * 10), Sample(None, "q", ["two"] + ["three"] * 9), Sample(None, "q", [])]
    assert vqa_metric(samples, ["nikon", "2", "x"]) == {"vqa_accuracy": pytest.approx((1.0 + 0.3) / 2)}
    assert vqa_metric(samples[2:], ["x"]) == {}


# -- letter accuracy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("The answer is B", "B"), (" B) blue", "B"), ("[C] purple", "C"),
    ("Answer: C", "C"), ("The correct answer is (D).", "D"), ("B. blue", "B"), ("A.", "A"),
    ("A dog", None), ("", None), ("I think so", None),
    ("b", "B"), ("b.", "B"), ("(c)", "C"), ("\uff22", "B"), ("\uff22\uff0e", "B"),  # bare lower-case, full-width
    ("a dog", None), ("b is wrong", None),  # a lower-case letter only when it is the whole answer
])
def test_parse_letter(answer, letter):
    assert parse_letter(answer) == letter


def test_parse_letter_with_choices():
    choices = ["red", "green", "blue"]
    assert parse_letter("Blue.", choices) == "C"  # the text of exactly one option
    assert parse_letter("E", choices) is None  # not an option here
    assert parse_letter("The answer is E", choices) is None
    assert parse_letter("Answer: (B) green", choices) == "B"


@pytest.mark.parametrize("answer, score", [
    ("B", 1), (" B\n", 1), ("b", 1), (" b ", 1), ("B.", 1), ("B. blue", 1), ("B.blue", 1),  # lmms-eval's cases
    ("b.", 0), ("b. blue", 0), ("(B)", 0), ("The answer is B", 0), ("C.", 0), ("B)", 0), ("", 0), ("\uff22", 0),
])
def test_lmms_eval_rule(answer, score):
    """lmms-eval 0.7.3 sqa_process_results: stripped answer equals the letter ignoring case, or 'X.'/'X. ...' with X
    upper case."""
    assert lmms_eval_exact_match(answer, "B") == score


def test_lmms_eval_rule_against_lmms_eval_itself():
    """When lmms-eval is installed, its own sqa_process_results agrees on every case (its module imports alone)."""
    utils = pytest.importorskip("lmms_eval.tasks.scienceqa.utils", reason="lmms-eval is not installed")
    cases = ["B", "b", " b ", "B.", "B. blue", "b.", "b. x", "(B)", "C.", "", "Ｂ", "A", "a.", "B:", "BB"]
    doc = {"choices": ["x", "y", "z"], "answer": 1}
    assert [utils.sqa_process_results(doc, [c])["exact_match"] for c in cases] == \
        [lmms_eval_exact_match(c, "B") for c in cases]


def test_choice_metric():
    samples = [Sample(None, "p", ["B"], fields={"choices": ["x", "y"]}), Sample(None, "p", ["A"], fields={"choices": ["x", "y"]}),
               Sample(None, "p", ["A"], fields={"choices": ["x", "y"]})]
    # robust: '(B)' right, 'x' names option A, 'B' wrong; lmms-eval's rule takes neither '(B)' nor 'x'
    assert choice_metric(samples, ["(B)", "x", "B"]) == {"accuracy": pytest.approx(2 / 3), "lmms_eval_exact_match": 0.0}
    # a lower-case letter: right in both (lmms-eval compares ignoring case)
    assert choice_metric(samples, ["b", "a", "a."]) == {"accuracy": 1.0, "lmms_eval_exact_match": pytest.approx(2 / 3)}


# -- CIDEr-D ------------------------------------------------------------------------------------------------------
def test_cider_d_published_nlg_eval_example():
    """nlg-eval's README/test example (no tokenization, 2 references each): CIDEr 1.242192."""
    hyps = ["this is the model generated sentence1 which seems good enough",
            "this is sentence2 which has been generated by your model"]
    refs = [["this is one reference sentence for sentence1", "this is one more reference sentence for sentence1"],
            ["this is a reference sentence for sentence2 which was generated by your model",
             "this is the second reference sentence for sentence2"]]
    assert cider_d(hyps, refs)[0] == pytest.approx(1.242192, abs=5e-7)
    # one sample alone: every n-gram has df = N = 1, so every weight log(1) - log(1) = 0 (nlg-eval: 0.0)
    assert cider_d(["this is a good test"], [["this is a test", "this is also a test"]])[0] == 0.0


def test_cider_matches_pycocoevalcap_on_captions():
    """Values computed once by pycocoevalcap 1.2 (Java PTBTokenizer + Cider), stored in the fixture."""
    ref = json.loads((FIXTURES / "cider_reference.json").read_text())
    cands = [s["candidate"] for s in ref["samples"]]
    refs = [s["references"] for s in ref["samples"]]
    mean, per_sample = cider_d(*tokenize_corpus(cands, refs))
    assert per_sample == pytest.approx([s["cider_d"] for s in ref["samples"]], abs=1e-9)
    assert mean == pytest.approx(ref["corpus_cider_d"], abs=1e-9)
    assert cider(cands, refs) == pytest.approx(ref["corpus_cider_d"], abs=1e-9)


def test_cider_d_by_hand():
    # two samples, one word each, matching: unigram cosine 1 (weight log 2 each), no 2-4-grams (0), no length gap:
    # mean over n = 1/4, times 10 -> 2.5 per sample
    assert cider_d(["a", "b"], [["a"], ["b"]]) == (pytest.approx(2.5), [pytest.approx(2.5), pytest.approx(2.5)])
    # the length penalty counts bigrams: 'x y' against 'x y z' (and a second sample to make IDF non-zero)
    score = cider_d(["x y", "q"], [["x y z"], ["q"]])[1][0]
    w = math.log(2)  # every n-gram occurs in one of two samples' references
    uni = (2 * w * w) / (math.sqrt(2) * w * math.sqrt(3) * w)  # x, y shared; |hyp| = sqrt 2 w, |ref| = sqrt 3 w
    bi = (w * w) / (w * math.sqrt(2) * w)  # 'x y' shared; ref has 2 bigrams
    assert score == pytest.approx(10 * (uni + bi) / 4 * math.exp(-1 / 72))
