"""An example third-party backend: greedy decoding written out by hand instead of ``model.generate``.

It shows the whole plugin contract: subclass ``llava_accel.Backend``, set ``name`` and defaults, implement
``generate_ids``. Loading, preprocessing, padding and decoding come from the base class.
"""

from __future__ import annotations

from typing import Any

import torch

from llava_accel import Backend
from llava_accel.models.compat import cache_kwarg, output_cache


class ManualLoopBackend(Backend):
    name = "manual-loop"
    default_device = "cpu"
    default_dtype = "float32"

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                     streamer: Any = None) -> torch.Tensor:
        tok = self.processor.tokenizer
        mask = inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
        out = self.model(**inputs, position_ids=positions, use_cache=True)
        done = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
        new_tokens = []
        for step in range(max_new_tokens):
            logits = out.logits[:, -1]
            if min_new_tokens is not None and step < min_new_tokens:
                logits[:, tok.eos_token_id] = float("-inf")
            token = torch.where(done, tok.pad_token_id, logits.argmax(-1))
            new_tokens.append(token)
            done |= token == tok.eos_token_id
            if done.all():
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                             use_cache=True, **{cache_kwarg(self.model): output_cache(out)})  # renamed in 5.2x
        return torch.stack(new_tokens, dim=1)
