"""ROUGE-L of tokenized captions, as pycocoevalcap 1.2 (``rouge/rouge.py``, used by lmms-eval's ``coco2017_cap_val``)
computes it.

Per sample (Lin, "ROUGE", 2004): with LCS the longest common subsequence of tokens, P = max over references of
LCS / |candidate| and R = max of LCS / |reference| (taken separately), ROUGE-L = (1 + b^2) P R / (R + b^2 P) with
b = 1.2, 0 when P or R is 0. The score is the mean over samples. Tokens are the caption split at single spaces, as
there (an empty caption is one empty token).
"""

from __future__ import annotations

from statistics import fmean
from typing import Sequence

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row kept)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l_sample(candidate: str, references: Sequence[str]) -> float:
    cand = candidate.split(" ")
    lcs = [(lcs_length(ref, cand), len(ref)) for ref in (r.split(" ") for r in references)]
    precision = max(common / len(cand) for common, _ in lcs)
    recall = max(common / length for common, length in lcs)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + BETA ** 2) * precision * recall / (recall + BETA ** 2 * precision)


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """(mean ROUGE-L, per-sample scores) of space-separated tokenized ``candidates`` against their ``references``."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} reference lists")
    scores = [rouge_l_sample(c, refs) for c, refs in zip(candidates, references)]
    return (fmean(scores) if scores else 0.0), scores
