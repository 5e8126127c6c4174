"""The prompts of lmms-eval's LLaVA tasks, byte for byte (see docs/tasks.md for where each comes from).

Each builder takes a sample's ``fields`` (the structured parts of its prompt) and returns the prompt the chat template
wraps. The fields keep the parts separate so that ``max_input_len`` can cut the context and the question without
touching the answer instruction (``llava_accel.truncation``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

# lmms-eval coco_cap/utils.py: coco_doc_to_text
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
# lmms-eval textvqa/_default_template_textvqa_yaml: post_prompt of the default model
VQA_INSTRUCTION = "\nAnswer the question using a single word or phrase."
# lmms-eval scienceqa/scienceqa_img.yaml: post_prompt of the default format
CHOICE_INSTRUCTION = "\nAnswer with the option's letter from the given choices directly."


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


def options_block(choices) -> str:
    """'A. first\\nB. second', as lmms-eval's sqa_doc_to_text lists the choices."""
    return "\n".join(f"{option_letter(i)}. {c}" for i, c in enumerate(choices))


def caption_prompt(fields: Mapping[str, Any]) -> str:
    return CAPTION_PROMPT


def vqa_prompt(fields: Mapping[str, Any]) -> str:
    """``fields["question"]`` as shown (TextVQA capitalises it first, see ``textvqa_question``) + the instruction."""
    return f"{fields['question']}{VQA_INSTRUCTION}"


def choice_prompt(fields: Mapping[str, Any]) -> str:
    """'Context: {hint}\\n' (only when there is a hint), the question, the lettered options, the instruction."""
    context = f"Context: {fields['hint']}\n" if fields.get("hint") else ""
    return f"{context}{fields['question']}\n{options_block(fields['choices'])}{CHOICE_INSTRUCTION}"


def textvqa_question(question: str) -> str:
    """lmms-eval's textvqa_doc_to_text shows ``question.capitalize()`` (which also lower-cases the rest)."""
    return question.capitalize()


PROMPT_BUILDERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "caption": caption_prompt, "vqa": vqa_prompt, "choice": choice_prompt}
