"""Word error rate, on normalised text, with several references per sample.

Each sample is scored against the reference that gives it the fewest errors (substitutions + deletions +
insertions; a tie goes to the longer reference); the corpus WER is the sum of those errors over the sum of the
chosen references' word counts. The edit distance comes from ``jiwer`` when it is installed, else from the same
Levenshtein alignment written out here (machines without jiwer still get a WER; the tests check both agree).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, lower case, every Unicode punctuation character (category P*) deleted, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _SPACES.sub(" ", text).strip()


def word_errors(reference: str, hypothesis: str) -> int:
    """Minimum substitutions + deletions + insertions turning ``reference`` into ``hypothesis`` (both normalised)."""
    ref, hyp = reference.split(), hypothesis.split()
    if not ref or not hyp:
        return len(ref) + len(hyp)
    try:
        import jiwer
    except ImportError:
        return _levenshtein(ref, hyp)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return out.substitutions + out.deletions + out.insertions


def _levenshtein(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


@dataclass
class WerScore:
    """Corpus WER in percent (None when no sample has a non-empty reference) and what it was computed from."""

    wer: float | None
    errors: int
    reference_words: int
    scored_samples: int
    chosen_references: list[str | None]  # per sample: the normalised reference it was scored against


def best_reference(prediction: str, references: Sequence[str]) -> tuple[str, int] | None:
    """(normalised reference, errors) of the reference with the fewest errors; None if none has a word."""
    hyp = normalize(prediction)
    candidates = [r for r in (normalize(ref) for ref in references) if r]
    if not candidates:
        return None
    scored = [(word_errors(ref, hyp), -len(ref.split()), ref) for ref in candidates]
    errors, _, ref = min(scored)
    return ref, errors


def corpus_wer(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> WerScore:
    """WER (percent) of ``predictions[i]`` against ``references[i]``; samples without references are left out."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    errors = words = scored = 0
    chosen: list[str | None] = []
    for prediction, refs in zip(predictions, references):
        best = best_reference(prediction, refs)
        chosen.append(best[0] if best else None)
        if best:
            errors += best[1]
            words += len(best[0].split())
            scored += 1
    return WerScore(100.0 * errors / words if words else None, errors, words, scored, chosen)
