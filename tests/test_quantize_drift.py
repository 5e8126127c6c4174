"""Drift between two runs on the same samples, checked on hand-made cases."""

import pytest

from llava_accel.metrics.drift import common_prefix, drift, native_change


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix("a b c".split(), "a x c".split()) == 1


def test_hand_made_case():
    reference = [[1, 2, 3], [4, 5], [7], []]
    candidate = [[1, 2, 3], [4, 6], [8, 9], []]
    d = drift(reference, candidate, reference_wer=20.0, candidate_wer=25.5,
              reference_native={"accuracy": 0.5, "valid": True, "per_class": {"a": 1.0}, "cider": 1.0},
              candidate_native={"accuracy": 0.25, "valid": True, "per_class": {"a": 0.0}})
    assert d.samples == 4
    assert d.identical == 2 / 4  # the first and the (empty) last
    assert d.mean_common_prefix == (3 + 1 + 0 + 0) / 4
    assert d.mean_reference_length == (3 + 2 + 1 + 0) / 4
    assert d.wer_change == pytest.approx(5.5)
    assert d.native_change == {"accuracy": -0.25}  # booleans, nested values and one-sided metrics are not scores
    assert d.unit == "token"


def test_a_run_against_itself_has_zero_drift():
    answers = [[5, 6, 7], [8], [9, 9]]
    d = drift(answers, [list(a) for a in answers], reference_wer=12.0, candidate_wer=12.0,
              reference_native={"accuracy": 0.75}, candidate_native={"accuracy": 0.75})
    assert (d.identical, d.mean_common_prefix, d.wer_change, d.native_change) == (1.0, 2.0, 0.0, {"accuracy": 0.0})


def test_missing_wer_gives_none():
    assert drift([[1]], [[1]], reference_wer=None, candidate_wer=10.0).wer_change is None


def test_different_sample_counts_are_refused():
    with pytest.raises(ValueError, match="same samples: 2 reference answers, 1 candidate answers"):
        drift([[1], [2]], [[1]])
    with pytest.raises(ValueError, match="at least one sample"):
        drift([], [])


def test_native_change_only_numbers_in_both():
    assert native_change({"a": 1, "b": 2.0, "c": "x"}, {"a": 3, "b": 1.5, "c": "y", "d": 4}) == {"a": 2, "b": -0.5}
