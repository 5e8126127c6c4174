"""Drift: how far a candidate run's answers moved from a reference run's answers on the same samples.

A speed-up that changes answers (quantisation, bf16, another kernel) must say by how much, on the very samples it
was timed on: the share of answers that stayed identical, how long the answers stay identical before they part
(mean common-prefix length), and what that did to quality (change in WER and in the task's native metric).
Comparing a run with itself gives zero drift by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import LlavaAccelError
from .wer import normalize

if TYPE_CHECKING:
    from ..result import MeasureResult


@dataclass
class Drift:
    """Candidate against reference, sample by sample. Changes are candidate minus reference."""

    samples: int
    identical: float  # share (0..1) of samples whose answers are identical, unit by unit
    mean_common_prefix: float  # mean length of the two answers' longest common prefix, in ``unit``s
    mean_reference_length: float  # mean length of the reference answers, in ``unit``s (scale for the prefix)
    unit: str  # "token" (generated token ids) or "word" (answer text split on spaces, when ids are unknown)
    wer_change: float | None = None  # percentage points; None when either run has no WER
    native_change: dict[str, float] = field(default_factory=dict)  # per native metric that both runs report
    reference: dict[str, Any] = field(default_factory=dict)  # what the reference run was (its backend settings)

    def rows(self) -> list[tuple[str, str]]:
        """Lines of the measurement table."""
        ref = ", ".join(f"{k}={v}" for k, v in self.reference.items())
        wer = "n/a" if self.wer_change is None else f"{self.wer_change:+.2f} points"
        return [("drift vs reference", ref),
                ("  identical answers", f"{100 * self.identical:.1f} % of {self.samples}"),
                ("  common prefix", f"{self.mean_common_prefix:.2f} of {self.mean_reference_length:.2f} {self.unit}s "
                                    "(mean)"),
                ("  WER change", wer)] + [(f"  {k} change", f"{v:+.4g}") for k, v in self.native_change.items()]


def common_prefix(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix of two sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def drift(reference: Sequence[Sequence], candidate: Sequence[Sequence], unit: str = "token",
          reference_wer: float | None = None, candidate_wer: float | None = None,
          reference_native: Mapping[str, Any] | None = None,
          candidate_native: Mapping[str, Any] | None = None) -> Drift:
    """Drift of ``candidate`` answers (token-id or word lists) from ``reference`` answers, matched by position."""
    if len(reference) != len(candidate):
        raise ValueError(f"drift needs answers to the same samples: {len(reference)} reference answers, "
                         f"{len(candidate)} candidate answers")
    if not reference:
        raise ValueError("drift needs at least one sample")
    n = len(reference)
    wer_change = None if reference_wer is None or candidate_wer is None else candidate_wer - reference_wer
    return Drift(samples=n, identical=sum(list(r) == list(c) for r, c in zip(reference, candidate)) / n,
                 mean_common_prefix=sum(common_prefix(r, c) for r, c in zip(reference, candidate)) / n,
                 mean_reference_length=sum(len(r) for r in reference) / n, unit=unit, wer_change=wer_change,
                 native_change=native_change(reference_native or {}, candidate_native or {}))


def native_change(reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> dict[str, float]:
    """candidate - reference for every numeric metric both report (booleans and nested values are not scores)."""
    def numeric(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return {k: candidate[k] - reference[k] for k in reference if k in candidate
            and numeric(reference[k]) and numeric(candidate[k])}


REFERENCE_KEYS = ("backend", "device", "dtype", "quantize", "quantize_vision")


def compare(reference: "MeasureResult", candidate: "MeasureResult") -> Drift:
    """Drift of one ``measure()`` result from another on the same samples (matched by sample id). Generated token
    ids are compared when both results carry them, else the normalised answer words (results saved before ids
    were recorded)."""
    ref = {p.id: p for p in reference.predictions}
    if set(ref) != {p.id for p in candidate.predictions} or len(ref) != len(candidate.predictions):
        raise LlavaAccelError(f"drift needs two runs on the same samples, but the reference has {len(ref)} answers "
                              f"and this run {len(candidate.predictions)}, with other sample ids; measure the "
                              "reference with the same task, limit and seed")
    pairs = [(ref[p.id], p) for p in candidate.predictions]
    ids = all(r.token_ids or not r.new_tokens for r, _ in pairs) and all(c.token_ids or not c.new_tokens
                                                                          for _, c in pairs)
    seqs = [(r.token_ids, c.token_ids) if ids else (normalize(r.prediction).split(), normalize(c.prediction).split())
            for r, c in pairs]
    backend = reference.config.get("backend", {})
    result = drift([r for r, _ in seqs], [c for _, c in seqs], "token" if ids else "word", reference.wer,
                   candidate.wer, reference.native, candidate.native)
    result.reference = {k: backend[k] for k in REFERENCE_KEYS if k in backend}
    return result
