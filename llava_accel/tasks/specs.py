"""The named tasks as data: dataset, split, field mapping, prompt and metric, as lmms-eval 0.7.3 runs them.

A task is a ``TaskSpec``; nothing else in the code knows about COCO, ScienceQA or TextVQA. Its ``kind`` selects the
prompt builder (``prompts.PROMPT_BUILDERS``) and the native metric (``llava_accel.tasks.NATIVE_METRICS``); its
``columns`` say where each field lives in the dataset's rows, the same in every source layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .prompts import PROMPT_BUILDERS, option_letter, textvqa_question

# fields each kind needs from a row (besides the image)
KIND_FIELDS = {"caption": ("references",), "vqa": ("question", "references"),
               "choice": ("hint", "question", "choices", "answer")}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "caption" | "vqa" | "choice": the prompt builder and the native metric
    hub_id: str
    split: str
    columns: Mapping[str, str]  # our field -> the dataset's column ("image" too)
    max_new_tokens: int  # generation stops at EOS or after this many tokens (greedy)
    lmms_eval_task: str  # the lmms-eval task this reproduces
    config: str | None = None  # the hub dataset's configuration name
    id_column: str | None = None  # a column naming each row; else the row index
    former_ids: tuple[str, ...] = ()  # hub ids read, in order, when ``hub_id`` is not found (cache or hub)

    def sample_fields(self, row: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """(fields shown in the prompt, references) of one dataset row; ``KeyError`` names a missing column."""
        get = {f: row[self.columns[f]] for f in KIND_FIELDS[self.kind]}
        if self.kind == "caption":
            return {}, [str(r) for r in get["references"]]
        if self.kind == "vqa":
            return {"question": textvqa_question(str(get["question"]))}, [str(a) for a in get["references"]]
        fields = {"hint": str(get["hint"] or ""), "question": str(get["question"]),
                  "choices": [str(c) for c in get["choices"]]}
        return fields, [option_letter(int(get["answer"]))]

    def prompt(self, fields: Mapping[str, Any]) -> str:
        return PROMPT_BUILDERS[self.kind](fields)


TASKS: dict[str, TaskSpec] = {
    "coco": TaskSpec(
        name="coco", kind="caption", hub_id="lmms-lab-encoder/COCO-Caption2017", split="val",
        columns={"image": "image", "references": "answer"}, id_column="question_id", max_new_tokens=64,
        lmms_eval_task="coco2017_cap_val", former_ids=("lmms-lab/COCO-Caption2017",)),
    "scienceqa": TaskSpec(
        name="scienceqa", kind="choice", hub_id="lmms-lab-encoder/ScienceQA", config="ScienceQA-IMG", split="test",
        columns={"image": "image", "hint": "hint", "question": "question", "choices": "choices", "answer": "answer"},
        max_new_tokens=16, lmms_eval_task="scienceqa_img", former_ids=("lmms-lab/ScienceQA",)),
    "textvqa": TaskSpec(
        name="textvqa", kind="vqa", hub_id="lmms-lab-encoder/textvqa", split="validation",
        columns={"image": "image", "question": "question", "references": "answers"}, id_column="question_id",
        # lmms-eval sets no max_new_tokens for textvqa; its llava_hf model then allows 1024 (answers stop at EOS).
        # The yaml's `until: ["ASSISTANT:"]` is not applied: lmms-eval 0.7.3's llava_hf never cuts at it.
        max_new_tokens=1024, lmms_eval_task="textvqa_val", former_ids=("lmms-lab/textvqa",)),
}

# synthetic twins: same kind (prompt and metric) as their real task; short answers, so a short budget
SYNTHETIC_KINDS = {"synthetic-coco": "caption", "synthetic-textvqa": "vqa", "synthetic-scienceqa": "choice"}
SYNTHETIC_MAX_NEW_TOKENS = {"caption": 64, "vqa": 16, "choice": 16}


def task_kind(name: str) -> str | None:
    """'caption', 'vqa' or 'choice' for a named or synthetic task, else None."""
    return TASKS[name].kind if name in TASKS else SYNTHETIC_KINDS.get(name)


def task_max_new_tokens(name: str) -> int | None:
    """The generation budget the task's lmms-eval configuration uses (its synthetic twins: a short one)."""
    if name in TASKS:
        return TASKS[name].max_new_tokens
    return SYNTHETIC_MAX_NEW_TOKENS[SYNTHETIC_KINDS[name]] if name in SYNTHETIC_KINDS else None
