"""``eager``: transformers as a user calls it by default (no compile), CUDA fp16. The baseline for everything.

It also owns the ``quantize`` option, so every backend built on it (``cpu``, ``compile``) inherits it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from ..errors import BackendUnavailableError
from ..models.loading import LoadedModel
from ..quantize import BlockQuantizer, check_supported, preferred_dtype, quantize_model
from .base import Backend, resolve_dtype


class EagerBackend(Backend):
    name = "eager"
    default_device = "cuda"
    default_dtype = "float16"

    def __init__(self, model: str | LoadedModel | None = None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, attention: str | None = None, quantize: str | None = None,
                 quantize_vision: bool = False, **placement: Any) -> None:
        """``quantize``: None, "int8", "int8-dynamic" or "int4" (see llava_accel.quantize); an unsupported
        combination fails here, before the model is loaded. A ``LoadedModel`` passed in is quantised in place.
        ``placement``: ``device_map``, ``max_memory``, ``offload_folder`` (see ``Backend``)."""
        device = device or self.default_device
        dtype = dtype or preferred_dtype(quantize, device, resolve_dtype(self.default_dtype))
        check_supported(quantize, device, resolve_dtype(dtype), quantize_vision)
        if quantize and placement.get("device_map"):
            raise BackendUnavailableError("quantize with device_map is not supported: parts offloaded to the CPU or "
                                          "disk cannot be quantised in place; quantise on one device instead")
        self.quantize, self.quantize_vision = quantize, quantize_vision
        super().__init__(model, device, dtype, attention, **placement)
        self.quantization = quantize_model(self.model, quantize, self.device, self.dtype, quantize_vision) \
            if quantize else None

    def block_quantizer(self) -> BlockQuantizer | None:
        return BlockQuantizer(self.quantize, self.device, self.quantize_vision) if self.quantize else None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "quantize": self.quantize, "quantize_vision": self.quantize_vision,
                "quantization": None if self.quantization is None else asdict(self.quantization)}

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
