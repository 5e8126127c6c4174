"""``max_input_len``: a cap on a prompt's text tokens, met by a written rule rather than a blind cut.

Text tokens are the tokens of the templated prompt (BOS, ``USER:``, the prompt, ``ASSISTANT:``) with the image
placeholder excluded; the image tokens never count. A prompt over the cap is cut in this order, and only as far as
needed (token by token, from the end of the part being cut):

1. the context: ScienceQA's hint (``fields["hint"]``; the whole "Context: ...\\n" line goes once the hint is empty);
2. the question (``fields["question"]``), from its tail;
3. last resort, the options (``fields["choices"]``, as the lettered block), from their tail.

The chat template, the image placeholder and everything else in the prompt (the answer instruction) are kept. A part
is cut only when ``fields`` names it and its text occurs in the prompt, so a prompt without fields (COCO's, or a
user's) is never cut; when even the kept parts exceed the cap, that is a one-line ``PromptTooLongError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import PromptTooLongError
from .preprocessing import format_prompt
from .tasks.prompts import options_block

CONTEXT_LABEL = "Context: "


@dataclass
class FittedPrompt:
    prompt: str
    text_tokens: int  # of the templated prompt as it will run
    cut: bool  # True when the prompt was shortened to fit


@dataclass
class _Part:
    start: int  # the span removed with the part once its body is empty (a label included)
    body_start: int
    body_end: int
    end: int
    body: str


def count_text_tokens(tokenizer, prompt: str, image_token_id: int | None = None) -> int:
    """Text tokens of ``prompt`` in the chat template: every token except the image placeholder."""
    ids = tokenizer(format_prompt(prompt))["input_ids"]
    return sum(1 for i in ids if i != image_token_id)


def check_context(text_tokens: Sequence[int], image_tokens: int, context: int) -> None:
    """A one-line ``PromptTooLongError`` when a prompt leaves no position of the model's ``context`` for the answer
    (past it the model answers garbage, slowly): the same refusal ``max_input_len`` gives, for the model's own cap."""
    longest = max(range(len(text_tokens)), key=text_tokens.__getitem__, default=None)
    if longest is not None and text_tokens[longest] + image_tokens >= context:
        which = f"prompt {longest}" if len(text_tokens) > 1 else "the prompt"
        raise PromptTooLongError(
            f"{which} takes {text_tokens[longest] + image_tokens} tokens ({text_tokens[longest]} text, {image_tokens} "
            f"image), but the model's context holds {context} positions (max_position_embeddings) for prompt and "
            f"answer together; shorten the prompt (or cap it with max_input_len) or use a smaller img_size")


def _parts(prompt: str, fields: Mapping[str, Any]) -> list[_Part]:
    """The cuttable parts found in ``prompt``, in cutting order (hint, question, options)."""
    parts, pos = [], 0
    for name in ("hint", "question", "choices"):
        value = fields.get(name)
        if not value:
            continue
        body = options_block(value) if name == "choices" else str(value)
        at = prompt.find(body, pos)
        if at < 0:
            continue
        start, end = at, at + len(body)
        if name == "hint" and prompt[:at].endswith(CONTEXT_LABEL) and prompt[end:end + 1] == "\n":
            start, end = at - len(CONTEXT_LABEL), end + 1
        parts.append(_Part(start, at, at + len(body), end, body))
        pos = end
    return parts


def _render(prompt: str, parts: list[_Part], bodies: list[str]) -> str:
    out, pos = [], 0
    for part, body in zip(parts, bodies):  # parts are in prompt order
        out.append(prompt[pos:part.start])
        if body:
            out.append(prompt[part.start:part.body_start] + body + prompt[part.body_end:part.end])
        pos = part.end
    out.append(prompt[pos:])
    return "".join(out)


def fit_prompt(tokenizer, prompt: str, fields: Mapping[str, Any] | None, max_input_len: int | None,
               image_token_id: int | None = None) -> FittedPrompt:
    """``prompt`` cut by the rule above until its text tokens are at most ``max_input_len`` (None: no cap)."""
    def count(text: str) -> int:
        return count_text_tokens(tokenizer, text, image_token_id)

    n = count(prompt)
    if max_input_len is None or n <= max_input_len:
        return FittedPrompt(prompt, n, False)
    parts = _parts(prompt, fields or {})
    bodies = [p.body for p in parts]
    for i, part in enumerate(parts):
        ids = tokenizer(part.body, add_special_tokens=False)["input_ids"]
        bodies[i] = ""
        if count(_render(prompt, parts, bodies)) > max_input_len:
            continue  # this part goes entirely, and the next one is cut too
        lo, hi = 0, len(ids) - 1  # the longest prefix of ids[:k] that fits: k=0 fits, k=len(ids) did not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            bodies[i] = tokenizer.decode(ids[:mid], skip_special_tokens=True).strip()
            if count(_render(prompt, parts, bodies)) <= max_input_len:
                lo = mid
            else:
                hi = mid - 1
        bodies[i] = tokenizer.decode(ids[:lo], skip_special_tokens=True).strip()
        fitted = _render(prompt, parts, bodies)
        return FittedPrompt(fitted, count(fitted), True)
    kept = count(_render(prompt, parts, bodies))
    raise PromptTooLongError(
        f"max_input_len={max_input_len} is below the {kept} text tokens this prompt keeps after cutting its context, "
        f"question and options (chat template + instruction); use max_input_len >= {kept}")
