"""WER against hand-computed cases; jiwer and the built-in alignment agree."""

import random

import pytest

from llava_accel.metrics import wer as W
from llava_accel.metrics.wer import best_reference, corpus_wer, normalize, word_errors


@pytest.mark.parametrize("text, expected", [
    ("The Cat,  sat!", "the cat sat"),
    ("  don't\tstop\n", "dont stop"),
    ("A red-circle.", "a redcircle"),
    ("ＡＢＣ «quoted»", "abc quoted"),  # NFKC folds full-width letters; guillemets are punctuation
    ("...", ""),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("ref, hyp, errors", [
    ("the cat sat", "the cat sat", 0),
    ("the cat sat", "the dog sat", 1),  # substitution
    ("the cat sat", "the cat sat down", 1),  # insertion
    ("the cat sat", "the sat", 1),  # deletion
    ("the cat sat", "", 3),  # empty prediction: every reference word deleted
    ("a b c d", "b c d e", 2),  # deletion + insertion, not 4 substitutions
    ("a b c", "x y", 3),  # 2 substitutions + 1 deletion
])
def test_word_errors_hand_computed(ref, hyp, errors):
    assert word_errors(ref, hyp) == errors


def test_single_sample_percent():
    assert corpus_wer(["the dog sat"], [["the cat sat"]]).wer == pytest.approx(100 / 3)
    assert corpus_wer([""], [["a b"]]).wer == 100.0
    assert corpus_wer(["a b c d"], [["a b"]]).wer == 100.0  # 2 insertions over 2 words


def test_several_references_pick_fewest_errors():
    # "a red circle" vs refs: 1st: 0 errors; "there is a red circle": 2 deletions
    score = corpus_wer(["A red circle."], [["there is a red circle", "a red circle"]])
    assert score.wer == 0.0 and score.chosen_references == ["a red circle"]
    # tie on errors (1 each): the longer reference is chosen, so the rate is 1/4, not 1/2
    assert best_reference("x b c d", ["a b", "a b c d"]) == ("a b c d", 1)
    assert corpus_wer(["x b c d"], [["a b", "a b c d"]]).wer == 25.0


def test_corpus_is_total_errors_over_total_words():
    # sample 1: 1 error / 3 words; sample 2: 0 / 2; sample 3 has no reference and is left out
    score = corpus_wer(["the dog sat", "hello world", "anything"], [["the cat sat"], ["Hello, world!"], []])
    assert (score.errors, score.reference_words, score.scored_samples) == (1, 5, 2)
    assert score.wer == pytest.approx(20.0)
    assert score.chosen_references == ["the cat sat", "hello world", None]


def test_no_reference_at_all_gives_none():
    assert corpus_wer(["x"], [["..."]]).wer is None
    with pytest.raises(ValueError, match="2 predictions for 1 reference lists"):
        corpus_wer(["a", "b"], [["a"]])


def test_builtin_alignment_matches_jiwer(monkeypatch):
    rng = random.Random(0)
    vocab = "a b c d e".split()
    pairs = [(" ".join(rng.choices(vocab, k=rng.randint(1, 8))), " ".join(rng.choices(vocab, k=rng.randint(1, 8))))
             for _ in range(200)]
    with_jiwer = [word_errors(r, h) for r, h in pairs]
    monkeypatch.setitem(__import__("sys").modules, "jiwer", None)  # import jiwer -> ImportError
    assert [word_errors(r, h) for r, h in pairs] == with_jiwer
    assert W._levenshtein("a b c".split(), "a x c d".split()) == 2
