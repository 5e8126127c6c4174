"""The PTB tokenization pycocoevalcap applies to every caption before scoring (BLEU, METEOR, ROUGE-L, CIDEr-D).

pycocoevalcap 1.2 (which lmms-eval's ``coco2017_cap_val`` calls) runs Stanford CoreNLP 3.4.1's Java PTBTokenizer
(``-preserveLines -lowerCase``) on the captions and drops the punctuation tokens ``PTB_PUNCTUATION``. Two ways here:

- ``ptb-python`` (default, no Java): our re-implementation of that lexer's rules as they apply to captions (see
  ``ptb_tokenize``); ``tests/test_ptb.py`` compares it with the jar on fixed cases and on thousands of generated
  captions when Java and pycocoevalcap are present.
- ``ptb-java``: the jar itself, when pycocoevalcap and Java are installed: all captions in one Java call.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Sequence

from ..errors import MetricUnavailableError, OptionError
from .java import PTB_JAR, java_jar

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
    return _filter(t for t in tokens if t != '"')


def _filter(tokens) -> str:
    return " ".join(t for t in tokens if t and t not in PTB_PUNCTUATION)


PTB_PYTHON = "python"
PTB_JAVA = "java"
PTB_TOKENIZERS = (PTB_PYTHON, PTB_JAVA)
# characters the Java lexer reads as a line end: inside a caption they would shift every later line
_JAVA_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\u2028\u2029"})


def java_ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """``ptb-java``: pycocoevalcap's own step, its Stanford PTBTokenizer jar (``-preserveLines -lowerCase``) run once
    on all ``texts`` (one line each), then its punctuation filter. Needs pycocoevalcap and Java (``java.java_jar``)."""
    check_ptb_tokenizer(PTB_JAVA)
    java, jar = java_jar(PTB_JAR)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write("\n".join(t.translate(_JAVA_LINE_BREAKS) for t in texts))
    try:
        run = subprocess.run([java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                              "-lowerCase", f.name], capture_output=True, check=False)
    finally:
        os.unlink(f.name)
    lines = run.stdout.decode("utf-8").split("\n")[:len(texts)]
    if run.returncode != 0 or len(lines) != len(texts):
        detail = run.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise MetricUnavailableError(f"the Java PTB tokenizer failed ({len(lines)} lines for {len(texts)} captions): "
                                     f"{detail[0]}")
    return [_filter(line.rstrip().split(" ")) for line in lines]


def check_ptb_tokenizer(tokenizer: str) -> None:
    """A one-line error now (before any model loads) when ``tokenizer`` is unknown or cannot run here."""
    if tokenizer not in PTB_TOKENIZERS:
        raise OptionError(f"ptb_tokenizer must be one of {', '.join(PTB_TOKENIZERS)}, not {tokenizer!r}")
    if tokenizer == PTB_JAVA and isinstance(found := java_jar(PTB_JAR), str):
        raise MetricUnavailableError(f"the Java PTB tokenizer {found}; or use ptb_tokenizer='{PTB_PYTHON}' "
                                     f"(CLI: --ptb-tokenizer {PTB_PYTHON})")


def tokenize_captions(texts: Sequence[str], tokenizer: str = PTB_PYTHON) -> list[str]:
    """Every caption as pycocoevalcap scores it, with ``tokenizer`` (``ptb-python`` or ``ptb-java``)."""
    check_ptb_tokenizer(tokenizer)
    return java_ptb_tokenize(texts) if tokenizer == PTB_JAVA else [ptb_tokenize(t) for t in texts]


def tokenize_corpus(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenizer: str = PTB_PYTHON
                    ) -> tuple[list[str], list[list[str]]]:
    """(tokenized predictions, tokenized reference lists): every caption in one ``tokenize_captions`` call."""
    tokens = tokenize_captions([*predictions, *(r for refs in references for r in refs)], tokenizer)
    cands, refs, at = tokens[:len(predictions)], [], len(predictions)
    for group in references:
        refs.append(tokens[at:at + len(group)])
        at += len(group)
    return cands, refs
