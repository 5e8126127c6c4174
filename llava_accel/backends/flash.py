"""``flash``: eager generation with FlashAttention-2 kernels (``attn_implementation="flash_attention_2"``).

FlashAttention-2 needs the ``flash-attn`` package, an Ampere-or-newer CUDA GPU and fp16/bf16 activations. Each is
checked before loading, without importing flash_attn, so ``list_backends()`` stays cheap and says what is missing.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from ..errors import LlavaAccelError, install_hint
from ..models.loading import LoadedModel
from .base import missing_cuda, resolve_dtype
from .eager import EagerBackend

FLASH = "flash_attention_2"


class FlashBackend(EagerBackend):
    name = "flash"
    default_attention = FLASH

    def __init__(self, model: str | LoadedModel | None = None, device: str | None = None, dtype: str | None = None,
                 attention: str | None = None, **eager_options: Any) -> None:
        """``eager_options`` (e.g. ``quantize``) go to ``EagerBackend``."""
        if attention not in (None, FLASH):
            raise LlavaAccelError(f"the 'flash' backend always uses attention '{FLASH}', not '{attention}'; "
                                  f"compare attentions with the 'eager' backend and attention='{attention}'")
        super().__init__(model, device, dtype, FLASH, **eager_options)
        if self.attention != FLASH:  # e.g. transformers swapped in a kernel from the hub
            raise LlavaAccelError(f"transformers loaded attention '{self.attention}' instead of '{FLASH}'")

    @classmethod
    def unavailable_reason(cls, device: str | None = None, dtype: str | None = None,
                           attention: str | None = None) -> str | None:
        missing = []
        if flash_attn_version() is None:
            missing.append(f"the flash-attn package ({install_hint('flash')})")
        device = str(device or cls.default_device)
        if not device.startswith("cuda"):
            missing.append(f"a CUDA device (FlashAttention-2 has no '{device}' kernels)")
        elif missing_cuda():
            missing.append(missing_cuda())
        elif torch.cuda.get_device_capability(torch.device(device)) < (8, 0):
            major, minor = torch.cuda.get_device_capability(torch.device(device))
            missing.append(f"an Ampere or newer GPU (compute capability 8.0+, this one is {major}.{minor})")
        if resolve_dtype(dtype or cls.default_dtype) == torch.float32:
            missing.append("dtype float16 or bfloat16 (FlashAttention-2 has no float32 kernels)")
        return "needs " + "; ".join(missing) if missing else None


def flash_attn_version() -> str | None:
    """The installed flash-attn (FlashAttention-2) release, or None. Asked by distribution name, as transformers
    does: flash-attn-4 installs a ``flash_attn`` package too (``flash_attn.cute``), which holds no FlashAttention-2."""
    try:
        return version("flash-attn")
    except PackageNotFoundError:
        return None
