"""BLEU-1..4 of tokenized captions, as pycocoevalcap 1.2 (``bleu/bleu_scorer.py``, used by lmms-eval's
``coco2017_cap_val``) computes it.

Corpus BLEU (Papineni et al., ACL 2002): clipped n-gram matches and candidate n-grams are summed over all samples
before dividing; BLEU-n is the geometric mean of the 1..n precisions, times the brevity penalty exp(1 - r/c) when the
candidates are shorter than the references (c < r). Each sample's reference length is the one *closest* to its
candidate's length (the shorter on a tie), pycocoevalcap's ``option='closest'``. pycocoevalcap adds 1e-15 to every
numerator and 1e-9 to every denominator (so an empty corpus scores ~0, not an error); we do the same, so the values
agree to the last bit on the same tokens.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's guards against 0/0


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> list[float]:
    """[BLEU-1, ..., BLEU-n] of space-separated tokenized ``candidates`` against their ``references``."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} reference lists")
    correct, guess = [0] * n, [0] * n
    test_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        words = cand.split()
        max_ref: dict[tuple, int] = {}
        lengths = []
        for ref in refs:
            ref_words = ref.split()
            lengths.append(len(ref_words))
            for gram, count in _ngrams(ref_words, n).items():
                max_ref[gram] = max(max_ref.get(gram, 0), count)
        for gram, count in _ngrams(words, n).items():
            correct[len(gram) - 1] += min(max_ref.get(gram, 0), count)
        for k in range(n):
            guess[k] += max(0, len(words) - k)
        test_len += len(words)
        ref_len += min((abs(length - len(words)), length) for length in lengths)[1]
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores
