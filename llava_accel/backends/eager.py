"""``eager``: transformers as a user calls it by default (no compile), CUDA fp16. The baseline for everything."""

from __future__ import annotations

from typing import Any

import torch

from .base import Backend


class EagerBackend(Backend):
    name = "eager"
    default_device = "cuda"
    default_dtype = "float16"

    def generation_kwargs(self) -> dict[str, Any]:
        """Extra ``generate`` arguments; subclasses that only change generation settings override this alone."""
        return {}

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                     streamer: Any = None) -> torch.Tensor:
        tokenizer = self.processor.tokenizer
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                  do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, streamer=streamer,
                                  **self.generation_kwargs())
        return out[:, inputs["input_ids"].shape[1]:]
