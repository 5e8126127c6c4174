"""The caption metrics lmms-eval's ``coco2017_cap_val`` reports: BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D).

Every caption is first tokenized as pycocoevalcap does (``ptb``: our Python tokenizer by default, or the Java one);
then ``bleu``, ``rouge``, ``cider`` (ours, equal to pycocoevalcap's) and ``meteor`` (pycocoevalcap's jar) score the
same tokens. METEOR needs pycocoevalcap and Java: without them it is left out and ``caption_scoring`` says why.
"""

from __future__ import annotations

from typing import Sequence

from .bleu import bleu
from .cider import cider_d
from .meteor import meteor as meteor_score, meteor_unavailable_reason
from .ptb import PTB_JAVA, PTB_PYTHON, tokenize_corpus
from .rouge import rouge_l


def caption_scoring(tokenizer: str = PTB_PYTHON, meteor: bool = True) -> dict[str, str]:
    """What scores captions here: the PTB tokenizer, and METEOR's jar or why METEOR is absent."""
    reason = meteor_unavailable_reason() if meteor else "not computed for synthetic tasks (speed runs)"
    return {"ptb_tokenizer": tokenizer,
            "meteor": f"absent: {reason}" if reason else "pycocoevalcap meteor-1.5.jar"}


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenizer: str = PTB_PYTHON,
                   meteor: bool = True) -> dict[str, float]:
    """``cider`` (first: the study's plots take the first metric as the task's), ``bleu_1``..``bleu_4``, ``meteor``
    (when asked and it can run), ``rouge_l`` of raw captions (pycocoevalcap's scale: 1.0 = the "100" of papers)."""
    cands, refs = tokenize_corpus(predictions, references, tokenizer)
    scores = {"cider": cider_d(cands, refs)[0]}
    scores.update({f"bleu_{n}": value for n, value in enumerate(bleu(cands, refs), 1)})
    if meteor and meteor_unavailable_reason() is None:
        scores["meteor"] = meteor_score(cands, refs)
    scores["rouge_l"] = rouge_l(cands, refs)[0]
    return scores


def caption_metric(samples, predictions: Sequence[str], tokenizer: str = PTB_PYTHON,
                   meteor: bool = True) -> dict[str, float]:
    """``caption_scores`` over the samples that have reference captions ({} when none has)."""
    scored = [(p, s.references) for s, p in zip(samples, predictions) if s.references]
    if not scored:
        return {}
    return caption_scores([p for p, _ in scored], [r for _, r in scored], tokenizer, meteor)


__all__ = ["PTB_JAVA", "PTB_PYTHON", "caption_metric", "caption_scores", "caption_scoring"]
