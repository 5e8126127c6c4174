"""``eagle``: lossless speculative decoding with an EAGLE draft head and an EAGLE-2 dynamic draft tree.

Same model, preprocessing, device and dtype as ``eager`` (on a CPU, without a dtype: the ``cpu`` backend's dtype);
only token generation differs (``llava_accel.eagle``): the head drafts a tree of likely continuations from the
target's own features, the target verifies the whole tree in one forward, and the longest path that matches the
target's greedy choices is kept, plus one token of the target's. The output is the target's greedy output; the speed-up depends on how many tokens each verification
keeps (``stats()["mean_acceptance_length"]``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..eagle.decoding import EagleDecoder, TreeConfig
from ..eagle.head import DEFAULT_HEAD, TRAIN_HINT, HeadError, load_head
from ..errors import BackendUnavailableError, OptionError
from ..lean.greedy import unsupported_reason
from ..models.loading import DEFAULT_MODEL, LoadedModel
from .cpu import CpuBackend
from .eager import EagerBackend

TREES = ("dynamic", "chain")


class EagleBackend(EagerBackend):
    name = "eagle"
    default_device = "cuda"
    default_dtype = "float16"
    device_map_refusal = ("the draft head, its tree KV cache and the verification pass assume the whole model on "
                          "one device; use 'eager' (or 'flash') with device_map")

    def __init__(self, model: str | LoadedModel | None = None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, attention: str | None = None, head: str | None = None,
                 tree: str = "dynamic", depth: int | None = None, top_k: int | None = None,
                 total_tokens: int | None = None, no_weights: bool = False) -> None:
        if tree not in TREES:
            raise OptionError(f"unknown draft tree '{tree}'; use one of {', '.join(TREES)}")
        defaults = TreeConfig() if tree == "dynamic" else TreeConfig.chain()
        depth = depth or defaults.depth
        self.tree = (TreeConfig.chain(depth) if tree == "chain" else
                     TreeConfig(depth, top_k or defaults.top_k, total_tokens or defaults.total_tokens))
        if dtype is None and torch.device(device or self.default_device).type == "cpu":
            dtype = CpuBackend.default_dtype  # fp16 on a CPU is emulated: slow, and not what `cpu` compares with
        super().__init__(model, device, dtype, attention, no_weights=no_weights)
        reason = unsupported_reason(self.model)  # the loop runs the lean layers: generate's tokens only where they apply
        if reason:
            raise BackendUnavailableError(f"backend 'eagle' cannot decode '{self.loaded.model_id}' exactly as generate "
                                          f"does: {reason}; use 'eager'")
        if head is None and Path(self.loaded.path).resolve() != Path(DEFAULT_MODEL).resolve():
            raise HeadError(f"the 'eagle' backend needs a draft head for '{self.loaded.model_id}'; "
                            + TRAIN_HINT.format(model=self.loaded.model_id))
        self.head_path = str(head or DEFAULT_HEAD)
        self.head, self.head_config = load_head(self.head_path, self.model, self.loaded.model_id)
        tokenizer = self.processor.tokenizer
        self.decoder = EagleDecoder(self.model, self.head, self.tree, tokenizer.eos_token_id, tokenizer.pad_token_id)

    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                     streamer: Any = None) -> torch.Tensor:
        return self.decoder.generate(inputs, max_new_tokens, min_new_tokens, streamer)

    def stats(self) -> dict[str, Any]:
        """Acceptance and cost counters since the last ``reset_stats()`` (see ``EagleStats`` for definitions)."""
        return self.decoder.stats.as_dict()

    def reset_stats(self) -> None:
        self.decoder.stats = type(self.decoder.stats)()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "head": self.head_path, "head_target": self.head_config.target,
                "tree": asdict(self.tree), "verify_attention": "sdpa"}
