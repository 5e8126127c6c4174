"""CIDEr-D for captions, as pycocoevalcap (used by lmms-eval's ``coco2017_cap_val``) computes it, without Java.

pycocoevalcap tokenizes every caption (``llava_accel.metrics.ptb``), then scores with CIDEr-D (Vedantam et al.,
CVPR 2015): n-grams n=1..4 weighted by TF-IDF, where the document frequency of an n-gram is the number of *samples
in the evaluated set* whose references contain it and IDF = log(#samples) - log(max(1, df)); per n, the clipped
cosine similarity between candidate and each reference, times a Gaussian length penalty exp(-delta^2 / (2 * 6^2));
averaged over n and references, times 10. The length delta counts bigrams (words - 1), as pycocoevalcap does. The
score is corpus-level: it changes with the sample set.
"""

from __future__ import annotations

import math
from collections import Counter
from statistics import mean
from typing import Sequence

from .ptb import PTB_PYTHON, tokenize_corpus


def _ngram_counts(sentence: str, n: int) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D of already tokenized (space-separated) captions: (corpus mean, per-sample scores).

    ``references[i]`` are the reference captions of ``candidates[i]``. Document frequencies come from the references
    of all samples given, as in pycocoevalcap, so score the whole evaluated set in one call.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} reference lists")
    if not candidates:
        return 0.0, []
    ref_counts = [[_ngram_counts(r, n) for r in refs] for refs in references]
    doc_freq = Counter(g for counts in ref_counts for g in set().union(*counts))
    log_samples = math.log(len(candidates))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_samples - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(v * v for v in order.values())) for order in vec]
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)  # pycocoevalcap's "length"
        return vec, norms, bigrams

    scores = []
    for cand, refs in zip(candidates, ref_counts):
        c_vec, c_norm, c_len = tfidf(_ngram_counts(cand, n))
        total = 0.0
        for ref in refs:
            r_vec, r_norm, r_len = tfidf(ref)
            penalty = math.exp(-((c_len - r_len) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                dot = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, w in c_vec[k].items())
                if c_norm[k] and r_norm[k]:
                    dot /= c_norm[k] * r_norm[k]
                total += dot * penalty / n
        scores.append(10.0 * total / len(refs))
    return mean(scores), scores


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenizer: str = PTB_PYTHON) -> float:
    """Corpus CIDEr-D of raw captions, tokenized with ``tokenizer`` (pycocoevalcap's scale: 1.0 = '100')."""
    return cider_d(*tokenize_corpus(predictions, references, tokenizer))[0]
