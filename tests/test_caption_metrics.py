"""BLEU-1..4, ROUGE-L, METEOR and CIDEr-D against hand-computed cases and pycocoevalcap 1.2 itself.

The parity tests import pycocoevalcap's pure-Python scorers (no Java) and skip without them; METEOR's needs Java and
compares with a value pycocoevalcap's own Meteor computed (tests/fixtures/meteor_reference.json): its jar takes
10 s or more to start, so it starts once.
"""

import json
import math
import random
from pathlib import Path

import pytest

from llava_accel.errors import MetricUnavailableError
from llava_accel.metrics import caption, meteor as meteor_module
from llava_accel.metrics.bleu import bleu
from llava_accel.metrics.caption import caption_metric, caption_scores, caption_scoring
from llava_accel.metrics.cider import cider_d
from llava_accel.metrics.java import METEOR_JAR, java_jar
from llava_accel.metrics.meteor import meteor
from llava_accel.metrics.rouge import lcs_length, rouge_l
from llava_accel.tasks import Sample, native_metric

FIXTURES = Path(__file__).parent / "fixtures"
METEOR_MISSING = java_jar(METEOR_JAR)
needs_meteor = pytest.mark.skipif(isinstance(METEOR_MISSING, str), reason=f"METEOR {METEOR_MISSING}")


def test_bleu_by_hand():
    # 'the cat' vs 'the cat sat': all 1- and 2-grams match; brevity penalty exp(1 - 3/2); no 3- or 4-grams at all
    penalty = math.exp(1 - 3 / 2)
    b1, b2, b3, b4 = bleu(["the cat"], [["the cat sat"]])
    assert b1 == pytest.approx(penalty) and b2 == pytest.approx(penalty)
    # no 3- or 4-grams: pycocoevalcap's guards make each precision 1e-15 / 1e-9 = 1e-6, not 0/0
    assert b3 == pytest.approx(penalty * 1e-6 ** (1 / 3)) and b4 == pytest.approx(penalty * 1e-12 ** (1 / 4))
    # clipping: 'the the the' against 'the cat': 1 of 3 unigrams counts; closest reference length 2 (not 5)
    assert bleu(["the the the"], [["the cat", "a cat on the mat"]])[0] == pytest.approx(1 / 3)


def test_rouge_l_by_hand():
    assert lcs_length("a b c d".split(), "a c d e".split()) == 3
    # P = 3/4, R = 3/4 -> F = 3/4 whatever beta
    assert rouge_l(["a b c d"], [["a c d e"]])[0] == pytest.approx(0.75)
    # P and R taken separately over the references: P = max(2/2, 1/2), R = max(2/4, 1/1)
    p, r = 1.0, 1.0
    assert rouge_l(["x y"], [["x y z w", "x"]])[0] == pytest.approx((1 + 1.2 ** 2) * p * r / (r + 1.2 ** 2 * p))
    assert rouge_l(["q"], [["x y"]])[0] == 0.0


def _corpus(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """Tokenized captions over a small vocabulary (so n-grams repeat and match), 1-6 references each, some empty."""
    rng = random.Random(seed)
    vocab = "a man dog on the red bus with two people in of sitting near street".split()

    def sentence() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.choice([0, *range(1, 16)])))

    return [sentence() for _ in range(n)], [[sentence() for _ in range(rng.randint(1, 6))] for _ in range(n)]


FUZZ_SAMPLES = 1000


@pytest.mark.parametrize("seed", [0, 1])
def test_bleu_rouge_cider_equal_pycocoevalcap(seed):
    """pycocoevalcap's own scorers on the same tokens: BLEU and CIDEr-D to 1e-12, ROUGE-L to 1e-12."""
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed (pip install 'llava-accel[coco]')")
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    cands, refs = _corpus(FUZZ_SAMPLES, seed)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    scorer = BleuScorer(n=4)
    for c, r in zip(cands, refs):
        scorer += (c, r)
    theirs_bleu, _ = scorer.compute_score(option="closest", verbose=0)
    assert bleu(cands, refs) == pytest.approx(theirs_bleu, rel=1e-12, abs=1e-15)
    theirs_rouge, theirs_rouge_each = Rouge().compute_score(gts, res)
    ours_rouge, ours_rouge_each = rouge_l(cands, refs)
    assert ours_rouge == pytest.approx(theirs_rouge, abs=1e-12)
    assert ours_rouge_each == pytest.approx(list(theirs_rouge_each), abs=1e-12)
    theirs_cider, theirs_cider_each = Cider().compute_score(gts, res)
    ours_cider, ours_cider_each = cider_d(cands, refs)
    assert ours_cider == pytest.approx(theirs_cider, abs=1e-12)
    assert ours_cider_each == pytest.approx(list(theirs_cider_each), abs=1e-12)


@needs_meteor
def test_meteor_equals_pycocoevalcap():
    ref = json.loads((FIXTURES / "meteor_reference.json").read_text())
    assert meteor(ref["candidates"], ref["references"]) == pytest.approx(ref["meteor"], abs=1e-12)


def test_caption_scores_without_meteor(monkeypatch):
    monkeypatch.setattr(meteor_module, "java_jar", lambda jar: "needs a Java runtime (`java` on PATH)")
    scores = caption_scores(["A dog on a mat.", "Two cats."], [["a dog sits on a mat"], ["two cats", "cats"]])
    assert list(scores) == ["cider", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l"]
    assert caption_scoring()["meteor"] == "absent: needs a Java runtime (`java` on PATH)"
    with pytest.raises(MetricUnavailableError, match="METEOR needs a Java runtime"):
        meteor(["a"], [["a"]])


def test_caption_metric_keys_and_what_scored_them(monkeypatch):
    samples = [Sample(None, "p", ["a dog on a mat"], task="synthetic-coco"),
               Sample(None, "p", [], task="synthetic-coco")]
    scores = caption_metric(samples, ["a dog on a mat", "x"], meteor=False)
    assert set(scores) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"}
    assert scores["bleu_1"] == pytest.approx(1.0) and scores["rouge_l"] == 1.0
    assert native_metric(samples, ["a dog on a mat", "x"]) == scores  # a synthetic task: never METEOR
    assert caption_scoring("java")["ptb_tokenizer"] == "java"
    assert caption.caption_metric(samples[1:], ["x"]) == {}
