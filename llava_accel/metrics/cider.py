"""CIDEr-D for captions, as pycocoevalcap (used by lmms-eval's ``coco2017_cap_val``) computes it, without Java.

pycocoevalcap runs every caption through Stanford CoreNLP 3.4.1's PTBTokenizer (Java, ``-lowerCase``) and drops
punctuation tokens, then scores with CIDEr-D (Vedantam et al., CVPR 2015): n-grams n=1..4 weighted by TF-IDF, where
the document frequency of an n-gram is the number of *samples in the evaluated set* whose references contain it and
IDF = log(#samples) - log(max(1, df)); per n, the clipped cosine similarity between candidate and each reference,
times a Gaussian length penalty exp(-delta^2 / (2 * 6^2)); averaged over n and references, times 10. The length
delta counts bigrams (words - 1), as pycocoevalcap does. The score is corpus-level: it changes with the sample set.

The tokenizer here, ``ptb-python``, is our re-implementation of that Java step (lower-casing, PTB splitting of
punctuation, clitics and brackets, then pycocoevalcap's punctuation filter). It matches the Java tokenizer on every
case in ``tests/fixtures/ptb_reference.jsonl``; it may differ on rare constructs not covered there.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from statistics import mean
from typing import Sequence

# pycocoevalcap drops these tokens; the bracket names are upper case there, so the lower-cased -lrb- etc. survive.
PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                   "...", ";"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_QUOTES = {"\u2018": "`", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u201a": "'", "\u201e": '"'}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "lemme": "lem me",
                "gimme": "gim me"}
_TITLES = ("mr|mrs|ms|dr|prof|st|jr|sr|vs|etc|co|inc|ltd|corp|mt|ave|gen|gov|sen|rep|capt|col|lt|sgt|rev|messrs|"
           "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec")
_TOKEN = re.compile(r"""
    (?:https?://|www\.)[\w./?=&%#~+:-]*[\w/]      # URL
  | [\w.+-]+@\w[\w-]*(?:\.[\w-]+)+                # e-mail
  | (?:[a-z]\.){2,}                               # letter-period abbreviations: u.s., p.m., e.g.
  | (?:""" + _TITLES + r""")\.(?![a-z])           # titles and other abbreviations keep their period
  | no\.(?=\s*\d)                                 # "no. 5"
  | \d+(?:[.,:]\d+)+                              # 3.5, 30,000, 12:45
  | y'(?=\s*all\b) | 'n' | '\d+s\b | ma'am          # y' all, rock 'n' roll, the '90s
  | [a-z]'(?!(?:s|re|ve|ll|d|m|t)\b)[a-z]\w*       # o'clock, d'angelo
  | \w+(?=n't)                                    # do|n't, ca|n't
  | n't
  | '(?:s|re|ve|ll|d|m)(?![\w])                   # clitics: dog|'s, we|'ll
  | \w+(?:[-/&]\w+)*                              # words, hyphenated words, 1/2, at&t
  | \.\.\.+ | --+ | [?!]+                         # ellipsis, dashes, ?! runs
  | \S                                            # any other single character
""", re.VERBOSE)


def ptb_tokenize(text: str) -> str:
    """``ptb-python``: a caption as pycocoevalcap sees it. 'A dog's bowl (red).' -> "a dog 's bowl -lrb- red -rrb-"."""
    text = text.lower().replace("\n", " ")
    for curly, plain in _QUOTES.items():
        text = text.replace(curly, plain)
    tokens = []
    for token in _TOKEN.findall(text):
        tokens.extend(_SPLIT_WORDS.get(token, _BRACKETS.get(token, token)).split())
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATION and t != '"')


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


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D of raw captions, tokenized with ``ptb-python`` (pycocoevalcap's scale: 1.0 = '100')."""
    return cider_d([ptb_tokenize(p) for p in predictions],
                   [[ptb_tokenize(r) for r in refs] for refs in references])[0]


def cider_metric(samples, predictions: Sequence[str]) -> dict[str, float]:
    """``{"cider": CIDEr-D over the samples that have reference captions}``."""
    scored = [(p, s.references) for s, p in zip(samples, predictions) if s.references]
    if not scored:
        return {}
    return {"cider": cider([p for p, _ in scored], [r for _, r in scored])}
