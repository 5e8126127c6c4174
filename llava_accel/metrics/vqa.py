"""VQA accuracy (TextVQA, VQAv2) with EvalAI's answer normalisation, as lmms-eval's ``textvqa_val`` computes it.

An answer counts as fully right when at least 3 of the human answers say the same; the score is averaged over the
10 leave-one-out subsets of the 10 answers: ``mean_i min(1, #{j != i : answer_j == prediction} / 3)``. Prediction and
answers are normalised first (lower case, punctuation, number words to digits, articles dropped, contractions).

The normalisation reproduces EvalAI's answer processor (also in lmms-eval, ``vqa_eval_metric.EvalAIAnswerProcessor``)
behaviour for behaviour, quirks included: commas and question marks are deleted before anything else, a period is
deleted unless a digit follows (at most 32 times), and contractions are restored only for the lower-case keys.
"""

from __future__ import annotations

import re
from statistics import mean
from typing import Sequence

# Contractions written without their apostrophe, restored to the standard form (EvalAI's table; its upper-case keys
# can never match after lower-casing and are left out, which changes nothing).
_CONTRACTIONS = dict(pair.split(":") for pair in """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've couldnt've:couldn't've
didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've hadn'tve:hadn't've hasnt:hasn't
havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd howll:how'll hows:how's isnt:isn't
itd:it'd itd've:it'd've it'dve:it'd've itll:it'll maam:ma'am mightnt:mightn't mightnt've:mightn't've
mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've neednt:needn't notve:not've oclock:o'clock
oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've
shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll someones:someone's
somethingd:something'd somethingd've:something'd've something'dve:something'd've somethingll:something'll
thats:that's thered:there'd thered've:there'd've there'dve:there'd've therere:there're theres:there's
theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas
wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll whatre:what're whats:what's
whatve:what've whens:when's whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've
who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're whys:why's wont:won't
wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll
y'allll:y'all'll yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've
""".split())
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"\.(?!\d)")  # EvalAI's pattern "(?!<=\d)(\.)(?!\d)": its first group is a no-op look-ahead
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")


def _strip_punctuation(text: str) -> str:
    """A mark touching a space (or any text with a comma between digits) is deleted, else it becomes a space."""
    out = text
    for mark in _PUNCTUATION:
        spaced = f"{mark} " in text or f" {mark}" in text or _DIGIT_COMMA_DIGIT.search(text) is not None
        out = out.replace(mark, "" if spaced else " ")
    return _PERIOD.sub("", out, count=32)  # EvalAI passes re.UNICODE (32) where re.sub expects the count


def normalize_answer(answer: str) -> str:
    """EvalAI's normal form of a VQA answer: 'The answer is Two.' -> 'answer is 2'."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's VQA accuracy in [0, 1]: min(1, matches among the other answers / 3), averaged leave-one-out."""
    if not answers:
        raise ValueError("VQA accuracy needs at least one reference answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    return mean(min(1.0, sum(gt == pred for j, gt in enumerate(gts) if j != i) / 3) for i in range(len(gts)))


def vqa_metric(samples, predictions: Sequence[str]) -> dict[str, float]:
    """``{"vqa_accuracy": mean over the samples that have reference answers}`` (a fraction, 0..1)."""
    scores = [vqa_accuracy(p, s.references) for s, p in zip(samples, predictions) if s.references]
    return {"vqa_accuracy": mean(scores)} if scores else {}
