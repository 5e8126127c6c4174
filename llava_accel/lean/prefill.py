"""The prefill of a lean decoding loop: the model's own LLaVA forward, so that the first token and the prompt's KV
cache are exactly what ``generate`` computes (the vision tower and projector run only here)."""

from __future__ import annotations

from typing import Any

import torch

from ..models.compat import output_cache


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch, as ``generate`` makes them (real tokens count from 0, pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def run_target(model: Any, inputs: dict[str, torch.Tensor], use_cache: bool = True):
    """The LLaVA forward on a prepared batch: (input embeddings with image features in place, final-norm hidden
    states, KV cache). The embeddings are caught on their way into the language model, so nothing runs twice."""
    caught = {}

    def catch(module, args, kwargs):
        caught["embeds"] = kwargs["inputs_embeds"]

    handle = model.model.language_model.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        out = model.model(**inputs, position_ids=prompt_positions(inputs["attention_mask"]), use_cache=use_cache)
    finally:
        handle.remove()
    return caught["embeds"], out.last_hidden_state, output_cache(out)
