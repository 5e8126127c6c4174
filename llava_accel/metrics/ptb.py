"""The PTB tokenization pycocoevalcap applies to every caption before scoring (BLEU, METEOR, ROUGE-L, CIDEr-D).

pycocoevalcap 1.2 (which lmms-eval's ``coco2017_cap_val`` calls) runs Stanford CoreNLP 3.4.1's Java PTBTokenizer
(``-preserveLines -lowerCase``) on the captions and drops the punctuation tokens ``PTB_PUNCTUATION``. Two ways here:

- ``python`` (default, no Java): the Java lexer's rules re-implemented in Python (``ptb_lexer``);
  ``tests/test_ptb.py`` compares it with the jar on fixed cases and on thousands of generated captions when Java
  and pycocoevalcap are present.
- ``java``: the jar itself, when pycocoevalcap and Java are installed: all captions in one Java call.

``tokenize_corpus`` tokenizes the predictions as one batch and the references as another, as lmms-eval does (the
lexer may look from one line into the next, so batches matter in rare cases: see ``ptb_lexer``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Sequence

from ..errors import MetricUnavailableError, OptionError
from .java import PTB_JAR, java_jar
from .ptb_lexer import lex_lines

# pycocoevalcap drops these tokens; the bracket names are upper case there, so the lower-cased -lrb- etc. survive.
PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                   "...", ";"}
PTB_PYTHON = "python"
PTB_JAVA = "java"
PTB_TOKENIZERS = (PTB_PYTHON, PTB_JAVA)
# characters the Java lexer reads as a line end: pycocoevalcap replaces only "\n", so one of these inside a caption
# would shift every later line there; both our tokenizers read them as spaces
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\u2028\u2029"})


def _filter(line: str) -> str:
    """pycocoevalcap's step after the tokenizer on one output line (tokens joined by spaces): trailing white space
    stripped (Python's idea of it, which includes U+3000 at the end of a token), punctuation tokens dropped."""
    return " ".join(t for t in line.rstrip().split(" ") if t not in PTB_PUNCTUATION)


def python_ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """``python``: the captions through ``ptb_lexer`` (the Java lexer's rules in Python), read as one text with one
    caption per line like the jar reads them, then pycocoevalcap's filter."""
    return [_filter(" ".join(tokens)) for tokens in lex_lines([t.translate(_LINE_BREAKS) for t in texts])]


def ptb_tokenize(text: str) -> str:
    """One caption as pycocoevalcap sees it: 'A dog's bowl (red).' -> "a dog 's bowl -lrb- red -rrb-"."""
    return python_ptb_tokenize([text])[0]


def java_ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """``java``: pycocoevalcap's own step, its Stanford PTBTokenizer jar (``-preserveLines -lowerCase``) run once
    on all ``texts`` (one line each), then its punctuation filter. Needs pycocoevalcap and Java (``java.java_jar``)."""
    check_ptb_tokenizer(PTB_JAVA)
    java, jar = java_jar(PTB_JAR)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write("\n".join(t.translate(_LINE_BREAKS) for t in texts))
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
    return [_filter(line) for line in lines]


def check_ptb_tokenizer(tokenizer: str) -> None:
    """A one-line error now (before any model loads) when ``tokenizer`` is unknown or cannot run here."""
    if tokenizer not in PTB_TOKENIZERS:
        raise OptionError(f"ptb_tokenizer must be one of {', '.join(PTB_TOKENIZERS)}, not {tokenizer!r}")
    if tokenizer == PTB_JAVA and isinstance(found := java_jar(PTB_JAR), str):
        raise MetricUnavailableError(f"the Java PTB tokenizer {found}; or use ptb_tokenizer='{PTB_PYTHON}' "
                                     f"(CLI: --ptb-tokenizer {PTB_PYTHON})")


def tokenize_captions(texts: Sequence[str], tokenizer: str = PTB_PYTHON) -> list[str]:
    """Every caption as pycocoevalcap scores it, with ``tokenizer`` (``python`` or ``java``)."""
    check_ptb_tokenizer(tokenizer)
    return (java_ptb_tokenize if tokenizer == PTB_JAVA else python_ptb_tokenize)(texts)


def tokenize_corpus(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenizer: str = PTB_PYTHON
                    ) -> tuple[list[str], list[list[str]]]:
    """(tokenized predictions, tokenized reference lists): the predictions in one batch, all references in another
    (lmms-eval tokenizes its ``res`` and ``gts`` so)."""
    cands, tokens = tokenize_captions(predictions, tokenizer), tokenize_captions([r for g in references for r in g],
                                                                                  tokenizer)
    refs, at = [], 0
    for group in references:
        refs.append(tokens[at:at + len(group)])
        at += len(group)
    return cands, refs
