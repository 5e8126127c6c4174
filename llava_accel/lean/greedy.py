"""Greedy decoding in a loop we own: the same tokens as ``generate(do_sample=False)``, with less work per step.

Why: on a CPU a small model's decode step is bound by per-operator costs, not by its weight bytes. transformers'
``generate`` grows a ``DynamicCache`` by ``torch.cat`` (every step copies the whole cache once per layer), runs each
layer through its module stack and checks its stopping criteria. Here the prefill is the model's own forward
(``prefill.run_target``), and each later step is the decoder layers as plain tensor ops (``layer.decoder_layer``)
over a preallocated ``SlotCache``: on a 247M-parameter LLaVA with int8 weights (2 cores) 8.3 ms per step where
``generate`` takes 11.5 (docs/backends.md). Quantised Linear layers run as their modules, so every ``quantize``
mode works.

The arithmetic is transformers' Llama (tests compare the tokens with ``generate`` in float32 and bfloat16); what
``generate`` would do beyond greedy argmax, the logits processors a model's generation config can switch on, is
not reproduced: such a model is refused (``unsupported_reason``) and the backend keeps ``generate``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .cache import SlotCache
from .layer import RopeTable, decoder_layer, layer_weights, module_projection
from .prefill import run_target

# generation-config fields that make ``generate`` change the logits before its argmax
LOGITS_FIELDS = ("repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
                 "suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
                 "sequence_bias", "min_length", "exponential_decay_length_penalty")


def unsupported_reason(model: Any) -> str | None:
    """None when the lean layers compute exactly what ``generate`` does for ``model``, else why not (one line).
    Shared by every loop built on them (``GreedyDecoder``, EAGLE's)."""
    from transformers import GenerationConfig

    text = model.config.text_config
    if getattr(text, "model_type", None) != "llama":
        return f"its text model is '{text.model_type}', and the lean layers are Llama's"
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type")) == "dynamic":
        return "its RoPE is 'dynamic' (rescaled with the sequence length), and the lean layers use one fixed table"
    if len({p.device for p in model.parameters()}) > 1:
        return "the model is spread over several devices (device_map)"
    config, default = getattr(model, "generation_config", None), GenerationConfig()
    changed = [f for f in LOGITS_FIELDS if config is not None and getattr(config, f, None) != getattr(default, f, None)]
    if changed:
        return f"its generation config changes the logits before the argmax ({', '.join(changed)})"
    return None


class GreedyDecoder:
    """Greedy decoding of a Llama-based ``LlavaForConditionalGeneration``, as ``generate`` does it."""

    def __init__(self, model: Any, eos_token_id: int, pad_token_id: int) -> None:
        self.model, self.lm = model, model.model.language_model
        self.eos, self.pad = eos_token_id, pad_token_id
        # read once: module lookups cost more than a small model's matmuls (the weights never move)
        self._embed_w = self.lm.embed_tokens.weight
        self._layers = [layer_weights(layer) for layer in self.lm.layers[: self.lm.config.num_hidden_layers]]
        self._lm_head = module_projection(model.lm_head)

    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                 streamer: Any = None) -> torch.Tensor:
        """New token ids (batch, steps), ``pad`` after a row's EOS; stops when every row has ended or at
        ``max_new_tokens``. EOS is forbidden before ``min_new_tokens`` and ``streamer`` is fed as ``generate`` does."""
        mask = inputs["attention_mask"]
        batch, length = mask.shape
        if streamer is not None:
            streamer.put(inputs["input_ids"].cpu())
        _, hidden, prompt_cache = run_target(self.model, inputs)
        capacity = length + max_new_tokens
        cache = SlotCache.for_model(self.lm.config, batch, capacity, hidden.dtype, hidden.device)
        cache.load_prefill(prompt_cache, start=(mask == 0).sum(1))
        del prompt_cache
        rope = RopeTable(self.lm.rotary_emb, hidden, capacity)
        position = mask.sum(1)  # of the next token fed, per row
        finished = torch.zeros(batch, dtype=torch.bool, device=mask.device)
        hidden, tokens = hidden[:, -1], []
        while True:
            logits = self._lm_head(hidden).float()
            if len(tokens) < (min_new_tokens or 0):
                logits[:, self.eos] = float("-inf")
            token = logits.argmax(-1).masked_fill(finished, self.pad)
            tokens.append(token)
            if streamer is not None:
                streamer.put(token.cpu())
            finished |= token == self.eos
            if len(tokens) == max_new_tokens or bool(finished.all()):
                break
            hidden = self._step(token, position, cache, rope)
            position = position + 1
        if streamer is not None:
            streamer.end()
        return torch.stack(tokens, 1)

    def _step(self, token: torch.Tensor, position: torch.Tensor, cache: SlotCache, rope: RopeTable) -> torch.Tensor:
        """One token per row through the decoder layers -> its final-norm hidden state (batch, h)."""
        slots = torch.arange(cache.begin + 1, device=token.device)
        allowed = (slots >= cache.start[:, None])[:, None, None]  # (batch, 1, 1, keys): not the prompt's padding
        hidden = F.embedding(token[:, None], self._embed_w)
        cos_sin = rope(position[:, None])
        for weights in self._layers:
            hidden = decoder_layer(weights, hidden, cos_sin, allowed, cache)
        cache.keep_all(1)
        return self.lm.norm(hidden)[:, -1]
