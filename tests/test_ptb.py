"""The PTB tokenizer behind the COCO metrics: ``python`` (our lexer) against pycocoevalcap's Java PTBTokenizer.

The Java comparisons need pycocoevalcap (its jar) and a Java runtime and skip without them; each sends all its
captions through the jar in one call, so they take seconds.
"""

import json
import random
from pathlib import Path

import pytest

from llava_accel.errors import MetricUnavailableError, OptionError
from llava_accel.metrics import java as java_tools
from llava_accel.metrics.ptb import (check_ptb_tokenizer, java_ptb_tokenize, ptb_tokenize, python_ptb_tokenize,
                                     tokenize_captions, tokenize_corpus)

FIXTURES = Path(__file__).parent / "fixtures"
needs_java = pytest.mark.skipif(isinstance(java_tools.java_jar(java_tools.PTB_JAR), str),
                                reason=f"the Java PTB tokenizer {java_tools.java_jar(java_tools.PTB_JAR)}")

# The issue's cases, with the Java tokenizer's output (pycocoevalcap 1.2, after its punctuation filter)
ISSUE_CASES = {
    "A man \u2014 holding a kite.": "a man holding a kite",  # the em dash becomes "--", which is dropped
    "A dog\u2026 on a mat.": "a dog on a mat",  # "..." likewise
    "couch....": "couch",
    "bench.A dog": "bench.a dog",
    "'tis the season": "'t is the season",
    "C# and F#": "c# and f#",
    "Ph.D. student": "ph.d. student",
    "@home with a cat": "@home with a cat",
    "five-o'clock shadow": "five-o'clock shadow",
    "get 'em all": "get 'em all",
    "Y'know what": "y' know what",
    "\u00bd of a pizza": "1/2 of a pizza",
    "A dog's bowl (red).": "a dog 's bowl -lrb- red -rrb-",
    "\u00a35 and \u20ac3, 10\u00a2": "# 5 and $ 3 10 cents",
}

WORDS = ("a man woman dog cat people two red blue kite bench couch mat pizza street sign bus table sitting holding "
         "riding on in of with the and near next to is are there large small white shadow home student clock "
         "know party room sky water field tennis player").split()
PIECES = ("'s 're 've 'll 'd 'm n't s' ' '' 'em 'tis 'twas 'n' o'clock y'know y'all ma'am don't can't won't cannot "
          "gonna gotta wanna lemme gimme ain't I'm it's '90s '06 o'neil d'angelo five-o'clock c'mon c'est l'a qu' "
          ". , ! ? ?! : ; ... .... .. --- -- - ( ) [ ] { } < > \" ` `` / \\ | & % $ # @ * + = ~ ^ _ "
          "Ph.D. U.S. U.S.A. e.g. i.e. etc. Mr. Mrs. Dr. St. Jr. vs. Inc. Co. Ltd. No. p.m. Jan. Mt. Ave. Gen. "
          "Sen. Rev. fig. ca. op. C# F# C++ @home #tbt AT&T R&B 3.5 30,000 12:45 1/2 3-4 5% $5 10th 1990s 2x4 "
          "http://example.com/a?b=1 www.site.org user@mail.com :) :-( ;) e-mail t-shirt black-and-white a.b "
          "bench.A end. and/or w/ OK O.K. okay! 2. 3.0.1 IN THE MiXeD &amp; &lt; <br> <b>bold</b> -LRB- "
          "goin' 'cause 'bout fo'c'sle f**k s#!t 3\u00a01/2").split() + [
    "\u2014", "\u2013", "\u2026", "\u201c", "\u201d", "\u2018", "\u2019", "\u00bd", "\u00bc", "\u00be", "\u2153",
    "\u215b", "\u00a3", "\u20ac", "\u00a5", "\u00a2", "\u00b0", "\u00d7", "\u00b7", "\u2022", "\u00a9", "\u2122",
    "na\u00efve", "caf\u00e9", "Z\u00fcrich", "stra\u00dfe", "\u6771\u4eac", "\u00ab", "\u00bb", "\u00ad", "\u00a0"]
NOISE = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" * 3 + " " * 40
         + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" * 2
         + "\u00a0\u00ad\u00a2\u00a3\u00a5\u00bc\u00bd\u00be\u2013\u2014\u2018\u2019\u201c\u201d\u2026\u00e9\u00fc"
           "\u00df\u00f1\u03b1\u0416\u6771\u00b0\u00b2\u00d7\u2022\u20ac\u2122\u2153\u215b\u2044\u0301\u00b7\u00ab"
           "\u2039\u2010\u3000\u200b\ufeff\u0085\u00a7")


def generated_captions(n: int, seed: int) -> list[str]:
    """Caption-like lines mixing words with the constructs the lexer treats specially, glued or spaced at random,
    and lines of random characters."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.2:
            out.append("".join(rng.choice(NOISE) for _ in range(rng.randint(1, 40))))
            continue
        parts = [rng.choice(WORDS) if rng.random() < 0.55 else rng.choice(PIECES) for _ in range(rng.randint(1, 14))]
        parts = [p.capitalize() if rng.random() < 0.15 else p for p in parts]
        out.append("".join(p + rng.choice([" "] * 6 + [""] * 2 + list(".-',/&!?:")) for p in parts).strip())
    return out


def test_fixture_cases():
    """Lines tokenized by pycocoevalcap 1.2 in one file, in this order (the lexer looks across line ends)."""
    rows = [json.loads(line) for line in (FIXTURES / "ptb_reference.jsonl").read_text().splitlines()]
    assert len(rows) >= 90
    assert python_ptb_tokenize([r["text"] for r in rows]) == [r["pycocoevalcap"] for r in rows]


def test_issue_cases():
    assert python_ptb_tokenize(list(ISSUE_CASES)) == list(ISSUE_CASES.values())


def test_the_end_of_the_text_and_the_next_line_count():
    """At the very end of the text the jar gives "you ` ve" (its clitic rule needs a next character); before a line
    feed "you 've". And "I." before a line starting "The" is the letter and a period."""
    assert ptb_tokenize("you've") == "you ve"
    assert python_ptb_tokenize(["you've", "x"]) == ["you 've", "x"]
    assert python_ptb_tokenize(["a I.", "The dog"]) == ["a i", "the dog"]
    assert python_ptb_tokenize(["a I.", "dog"]) == ["a i.", "dog"]
    assert python_ptb_tokenize(["one\u2028two", "three"]) == ["one two", "three"]  # a line break inside: a space


def test_tokenizer_option_is_checked():
    with pytest.raises(OptionError, match="python, java"):
        check_ptb_tokenizer("spacy")
    assert tokenize_corpus(["A dog."], [["a Dog!", "dogs"]]) == (["a dog"], [["a dog", "dogs"]])


def test_java_tokenizer_missing_is_one_line(monkeypatch):
    monkeypatch.setattr(java_tools.shutil, "which", lambda name: None)
    with pytest.raises(MetricUnavailableError) as err:
        tokenize_captions(["a dog"], "java")
    assert "needs" in str(err.value) and "ptb_tokenizer='python'" in str(err.value) and "\n" not in str(err.value)


@needs_java
def test_issue_cases_and_fixture_against_the_jar():
    rows = [json.loads(line) for line in (FIXTURES / "ptb_reference.jsonl").read_text().splitlines()]
    texts = [*ISSUE_CASES, *(r["text"] for r in rows)]
    assert java_ptb_tokenize(texts) == [*ISSUE_CASES.values(), *(r["pycocoevalcap"] for r in rows)]


@needs_java
def test_our_java_call_is_pycocoevalcaps():
    """``java_ptb_tokenize`` gives what pycocoevalcap's own PTBTokenizer class gives (it writes its temporary file
    into its package folder, so that must be writable)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    texts = generated_captions(200, seed=11)
    try:
        theirs = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    except OSError as exc:
        pytest.skip(f"pycocoevalcap cannot write its temporary file: {exc}")
    assert java_ptb_tokenize(texts) == [theirs[i][0] for i in range(len(texts))]


FUZZ_CAPTIONS = 6000


@needs_java
def test_python_equals_java_on_generated_captions():
    texts = generated_captions(FUZZ_CAPTIONS, seed=0)
    java, python = java_ptb_tokenize(texts), python_ptb_tokenize(texts)
    differ = [(t, j, p) for t, j, p in zip(texts, java, python) if j != p]
    assert not differ, f"{len(differ)} of {len(texts)} differ, first: {differ[0]}"
    assert sum(bool(j) for j in java) > 0.9 * len(texts)  # the captions were not all reduced to nothing
