"""METEOR 1.5 of tokenized captions through pycocoevalcap's own jar (``meteor/meteor.py``), as lmms-eval reports it.

METEOR aligns words by exact match, stem, synonym (WordNet) and paraphrase tables that ship inside the jar, so it is
not re-implemented here: with pycocoevalcap and Java present we drive the jar exactly as pycocoevalcap does
(``-stdio -l en -norm``: one ``SCORE`` line per sample, then one ``EVAL`` line whose last answer is the corpus score);
without them the caption metrics leave METEOR out and say why (``llava_accel.metrics.caption``).
"""

from __future__ import annotations

import subprocess
from typing import Sequence

from ..errors import MetricUnavailableError
from .java import METEOR_JAR, java_jar


def meteor_unavailable_reason() -> str | None:
    found = java_jar(METEOR_JAR)
    return found if isinstance(found, str) else None


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR of space-separated tokenized ``candidates`` against their ``references`` (pycocoevalcap's)."""
    found = java_jar(METEOR_JAR)
    if isinstance(found, str):
        raise MetricUnavailableError(f"METEOR {found}")
    java, jar = found
    process = subprocess.Popen([java, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"],
                               cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)

    def ask(line: str) -> str:
        process.stdin.write(f"{line}\n".encode())
        process.stdin.flush()
        answer = process.stdout.readline().decode().strip()
        if not answer:
            raise MetricUnavailableError(f"the METEOR jar stopped answering (exit code {process.poll()})")
        return answer

    try:
        stats = []
        for cand, refs in zip(candidates, references, strict=True):
            hypothesis = cand.replace("|||", "").replace("  ", " ")  # pycocoevalcap's cleaning of the candidate
            stats.append(ask(" ||| ".join(("SCORE", " ||| ".join(refs), hypothesis))))
        process.stdin.write(f"EVAL ||| {' ||| '.join(stats)}\n".encode())
        process.stdin.flush()
        for _ in stats:  # per-sample scores, then the corpus score
            process.stdout.readline()
        return float(process.stdout.readline().decode().strip())
    finally:
        process.stdin.close()
        process.kill()
        process.wait()
