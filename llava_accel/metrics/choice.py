"""Multiple-choice accuracy (ScienceQA): which option letter did the model answer?

Two scores. ``accuracy`` parses the letter robustly ("B", "B.", "(B)", "B) text", "The answer is B", or the text of
exactly one option; a lower-case or full-width letter reads as that letter), so a model is not marked wrong for
its formatting. ``lmms_eval_exact_match`` is lmms-eval 0.7.3's ``scienceqa_img`` rule (``sqa_process_results``), kept
for comparison with published numbers: right when the stripped answer equals the letter ignoring case ("b" for B), or
when it is "X." / "X. ..." with X the letter in upper case ("b." does not count there).
"""

from __future__ import annotations

import re
import unicodedata
from statistics import mean
from typing import Sequence

_LEADING = re.compile(r"^[(\[]?([A-Z])(?:[)\].:]|$)")  # "B", "B.", "B:", "(B)", "[B] ...", "B) ..."
_BARE_LOWER = re.compile(r"^[(\[]?([a-z])[)\].]?$")  # the whole answer a lower-case letter: "b", "b.", "(b)"
_STATED = re.compile(r"(?i:answer|option|choice)(?:\s+is|\s*:)?\s*[(\[]?([A-Z])(?![A-Za-z])")  # "The answer is (B)"


def parse_letter(text: str, choices: Sequence[str] | None = None) -> str | None:
    """The option letter an answer names, or None. With ``choices``, only their letters count, and an answer that
    equals one option's text (case and a final period ignored) names that option."""
    valid = None if choices is None else {chr(ord("A") + i) for i in range(len(choices))}
    answer = unicodedata.normalize("NFKC", text).strip()  # full-width "Ｂ" -> "B"
    bare = _BARE_LOWER.match(answer)
    if bare and (valid is None or bare.group(1).upper() in valid):
        return bare.group(1).upper()
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
    """lmms-eval 0.7.3 ``sqa_process_results``: the stripped answer equals the letter ignoring case, or is 'X.' /
    'X. ...' with X an upper-case character that lower-cases to the letter's lower case."""
    answer, target = text.strip(), letter.strip().lower()
    if answer.lower() == target:
        return 1.0
    return float(len(answer) >= 2 and answer[0].isupper() and answer[1] == "." and answer[0].lower() == target)


def choice_metric(samples, predictions: Sequence[str]) -> dict[str, float]:
    """``{"accuracy", "lmms_eval_exact_match"}``, fractions over the samples that have a reference letter."""
    scored = [(s, p) for s, p in zip(samples, predictions) if s.references]
    if not scored:
        return {}
    robust = [parse_letter(p, s.fields.get("choices")) == s.references[0] for s, p in scored]
    strict = [lmms_eval_exact_match(p, s.references[0]) for s, p in scored]
    return {"accuracy": mean(map(float, robust)), "lmms_eval_exact_match": mean(strict)}
