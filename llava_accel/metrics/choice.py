"""Multiple-choice accuracy (ScienceQA): which option letter did the model answer?

Two scores. ``accuracy`` parses the letter robustly ("B", "B.", "(B)", "B) text", "The answer is B", or the text of
exactly one option), so a model is not marked wrong for its formatting. ``lmms_eval_exact_match`` is lmms-eval's
``scienceqa_img`` rule, kept for comparison with published numbers: right only when the answer *is* the letter or
starts with the letter followed by a period.
"""

from __future__ import annotations

import re
from statistics import mean
from typing import Sequence

_LEADING = re.compile(r"^[(\[]?([A-Z])(?:[)\].:]|$)")  # "B", "B.", "B:", "(B)", "[B] ...", "B) ..."
_STATED = re.compile(r"(?i:answer|option|choice)(?:\s+is|\s*:)?\s*[(\[]?([A-Z])(?![A-Za-z])")  # "The answer is (B)"


def parse_letter(text: str, choices: Sequence[str] | None = None) -> str | None:
    """The option letter an answer names, or None. With ``choices``, only their letters count, and an answer that
    equals one option's text (case and a final period ignored) names that option."""
    valid = None if choices is None else {chr(ord("A") + i) for i in range(len(choices))}
    answer = text.strip()
    for pattern in (_LEADING, _STATED):
        for match in pattern.finditer(answer):
            if valid is None or match.group(1) in valid:
                return match.group(1)
    if choices:
        bare = answer.rstrip(".").strip().lower()
        hits = [i for i, c in enumerate(choices) if str(c).strip().lower() == bare]
        if len(hits) == 1:
            return chr(ord("A") + hits[0])
    return None


def lmms_eval_exact_match(text: str, letter: str) -> float:
    """lmms-eval ``sqa_process_results``: the answer equals the letter, or is 'X.' / 'X. ...' with X the letter."""
    if text == letter:
        return 1.0
    return float(len(text) >= 2 and text[0].isupper() and text[1] == "." and text[0] == letter)


def choice_metric(samples, predictions: Sequence[str]) -> dict[str, float]:
    """``{"accuracy", "lmms_eval_exact_match"}``, fractions over the samples that have a reference letter."""
    scored = [(s, p) for s, p in zip(samples, predictions) if s.references]
    if not scored:
        return {}
    robust = [parse_letter(p, s.fields.get("choices")) == s.references[0] for s, p in scored]
    strict = [lmms_eval_exact_match(p.strip(), s.references[0]) for s, p in scored]
    return {"accuracy": mean(map(float, robust)), "lmms_eval_exact_match": mean(strict)}
