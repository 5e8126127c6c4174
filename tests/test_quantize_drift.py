"""Drift between two runs on the same samples: hand-made cases, then through measure() and the CLI."""

import dataclasses

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


@pytest.fixture(scope="module")
def runs():
    """The cpu backend measured on four samples, unquantised twice and int8 once."""
    import llava_accel as la
    from llava_accel.measure import measure

    kwargs = dict(dataset="synthetic-coco", limit=4, max_new_tokens=6, warmup=1, count_flops=False, idle_seconds=0)
    base = la.load_backend("cpu", dtype="bfloat16")
    ref = measure(base, **kwargs)
    again = measure(base, reference=ref, **kwargs)
    int8 = measure(la.load_backend("cpu", dtype="bfloat16", quantize="int8"), reference=ref, **kwargs)
    return ref, again, int8


def test_measure_reports_drift_and_zero_against_itself(runs):
    ref, again, int8 = runs
    assert ref.drift is None
    d = again.drift
    assert (d.samples, d.identical, d.unit, d.wer_change) == (4, 1.0, "token", 0.0)
    assert d.mean_common_prefix == d.mean_reference_length > 0
    assert all(v == 0 for v in d.native_change.values())
    q = int8.drift
    assert q.reference["quantize"] is None and int8.config["backend"]["quantize"] == "int8"
    expected = drift([p.token_ids for p in ref.predictions], [p.token_ids for p in int8.predictions])
    assert (q.identical, q.mean_common_prefix) == (expected.identical, expected.mean_common_prefix)
    assert q.wer_change == pytest.approx(int8.wer - ref.wer)
    table = str(int8)
    assert "quantize=int8" in table and "identical answers" in table and "WER change" in table


def test_drift_survives_json_and_falls_back_to_words(runs, tmp_path):
    from llava_accel.metrics.drift import compare
    from llava_accel.result import MeasureResult

    ref, _, int8 = runs
    back = MeasureResult.from_json(int8.to_json(tmp_path / "r.json") and tmp_path / "r.json")
    assert back.drift == int8.drift
    for p in back.predictions:  # a result saved before token ids were recorded
        p.token_ids = []
    assert compare(ref, back).unit == "word"


def test_drift_refuses_other_samples(runs):
    import llava_accel as la
    from llava_accel.metrics.drift import compare

    ref, _, int8 = runs
    with pytest.raises(la.LlavaAccelError, match="same samples"):
        compare(ref, dataclasses.replace(int8, predictions=int8.predictions[:2]))


def test_cli_measure_with_quantize_measures_the_unquantised_reference(capsys):
    from llava_accel.cli import main

    assert main(["measure", "--task", "synthetic-coco", "--limit", "2", "--max-new-tokens", "4", "--no-flops",
                 "--warmup", "1", "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out and "quantize=int8" in out and "drift vs reference" in out  # int8 picked bf16
    assert "dtype=bfloat16, quantize=None" in out  # the reference: same backend and dtype, unquantised
