"""FLOPs of LLaVA, counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add).

FlopCounterMode counts matmuls, convolutions and the attention kernels it knows. It does not know the CPU SDPA
kernel or the flash-attn ops; ``attention_mapping`` adds them with the same formula as the kernels it does know, so
a count never depends on the attention implementation. Elementwise ops, norms, softmax and activations are not
counted (as in every published transformer FLOP figure).

``measure()`` does not count on the backend's own model (a compiled or quantized model runs kernels the counter
cannot see): it counts on a weightless twin of the same architecture on the meta device, with eager attention,
fed the real batches' shapes. A dense transformer's FLOPs depend only on shapes, so this equals counting on the
real model (a test checks it), and it costs no device time or memory.
"""

from __future__ import annotations

import functools
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..checks import non_negative_int, one_of, positive_int
from ..image_size import check_img_size, enable_any_image_size, image_tokens, native_image_size
from ..models.compat import cache_kwarg, output_cache

aten = torch.ops.aten
LOGITS = ("all", "last")  # the LM head on every prompt position (a plain forward) or the last one (as generate)


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, v_head_dim: int) -> int:
    """QK^T and PV matmuls over the full (q_len x kv_len) score matrix, as FlopCounterMode counts SDPA.

    Causal masking is not subtracted: eager attention multiplies the full matrix too, and a count must not depend
    on the kernel.
    """
    return 2 * batch * heads * q_len * kv_len * (head_dim + v_head_dim)


def _sdpa_bhsd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """(batch, heads, seq, dim) layout: the CPU flash kernel and the fused 'overrideable' kernel."""
    b, h, sq, d = query_shape
    return attention_flops(b, h, sq, key_shape[-2], d, value_shape[-1])


def _flash_attn_bshd(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """flash-attn ``_flash_attn_forward``: (batch, seq, heads, dim) layout; query heads count (GQA)."""
    b, sq, h, d = q_shape
    return attention_flops(b, h, sq, k_shape[1], d, v_shape[-1])


def _flash_attn_varlen(q_shape, k_shape, v_shape, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *args,
                       out_shape=None, **kwargs) -> int:
    """flash-attn varlen (unpadded rows): counted as the padded batch (rows x max lengths), as eager attention is.

    With left padding the longest row has no padding, so max lengths are the padded lengths.
    """
    _, h, d = q_shape
    return attention_flops(cu_seqlens_q[0] - 1, h, max_seqlen_q, max_seqlen_k, d, v_shape[-1])


def attention_mapping() -> dict[Any, Any]:
    """``custom_mapping`` for FlopCounterMode: attention kernels it does not count by itself."""
    mapping: dict[Any, Any] = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_bhsd}
    if hasattr(aten, "_scaled_dot_product_fused_attention_overrideable"):
        mapping[aten._scaled_dot_product_fused_attention_overrideable] = _sdpa_bhsd
    for name, formula in (("_flash_attn_forward", _flash_attn_bshd), ("_flash_attn_varlen_forward", _flash_attn_varlen)):
        try:  # registered only once flash_attn (>= 2.6) has been imported
            mapping[getattr(torch.ops.flash_attn, name)] = formula
        except (AttributeError, RuntimeError):
            pass
    return mapping


class _FlopCounter(FlopCounterMode):
    """Leaves out the rotary embedding's tables: transformers 5.17 builds them with a matmul (inv_freq x positions,
    ``head_dim * seq_len`` FLOPs per row), 5.24 with an elementwise product that is not counted. A few thousand
    FLOPs either way, but a count must not depend on the transformers version."""

    def get_total_flops(self) -> int:
        counts = self.get_flop_counts()
        rotary = sum(sum(ops.values()) for name, ops in counts.items() if name.endswith("rotary_emb"))
        return super().get_total_flops() - rotary


def flop_counter() -> FlopCounterMode:
    return _FlopCounter(display=False, custom_mapping=attention_mapping())


def _count(fn, *args, **kwargs) -> tuple[int, Any]:
    with flop_counter() as counter:
        out = fn(*args, **kwargs)
    return counter.get_total_flops(), out


@contextmanager
def _meta_safe(model) -> Iterator[None]:
    """On the meta device, skip LLaVA's image-token count check (it reads tensor values, which meta has not).

    The check only compares counts; the placeholder mask it returns is the same without it.
    """
    if next(model.parameters()).device.type != "meta":
        yield
        return
    inner, token = model.model, image_token_id(model.config)
    inner.get_placeholder_mask = lambda input_ids=None, inputs_embeds=None, image_features=None, **_: (
        (input_ids == token).unsqueeze(-1).to(inputs_embeds.device))
    try:
        yield
    finally:
        del inner.get_placeholder_mask


def image_token_id(config) -> int:
    return getattr(config, "image_token_id", None) or config.image_token_index


@dataclass
class StepFlops:
    """FLOPs of one batch's prefill and of its first two decode steps (cache of S and S+1 tokens)."""

    prefill: int
    decode_at_prompt: int
    decode_at_prompt_plus_1: int


def count_generation(model, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, logits: str = "all") -> StepFlops:
    """Count the prefill (``logits='last'``: LM head on the last position only, as ``generate`` does) and two
    decode steps, on ``model`` as it is (real weights or meta)."""
    one_of(logits, "logits", LOGITS)
    kw = cache_kwarg(model)
    if tuple(pixel_values.shape[-2:]) != (native_image_size(model.config),) * 2:
        enable_any_image_size(model)  # as backends do for another img_size (works on transformers 5.17 too)
    batch = input_ids.shape[0]
    with torch.inference_mode(), _meta_safe(model):
        prefill, out = _count(model, input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                              use_cache=True, logits_to_keep=1 if logits == "last" else 0)
        steps = []
        for _ in range(2):
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
            step_ids = input_ids.new_zeros(batch, 1)
            flops, out = _count(model, input_ids=step_ids, attention_mask=attention_mask, use_cache=True,
                                **{kw: output_cache(out)})
            steps.append(flops)
    return StepFlops(prefill, *steps)


def meta_twin(config):
    """The architecture of ``config`` without weights, on the meta device, with eager attention (cached: it holds
    no memory, and building the 7B one takes seconds)."""
    return _meta_twin(config.to_json_string(use_diff=False))


@functools.lru_cache(maxsize=8)
def _meta_twin(config_json: str):
    from transformers import LlavaConfig

    from ..models.architecture import build_model

    config = LlavaConfig(**json.loads(config_json))
    for c in (config, config.text_config, config.vision_config):
        c._attn_implementation = "eager"
    return build_model(config, device="meta")


def meta_inputs(batch: int, seq_len: int, image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.zeros(batch, seq_len, dtype=torch.long, device="meta"),
            "pixel_values": torch.zeros(batch, 3, *image_size, device="meta")}


@dataclass
class FlopModel:
    """Per-sample FLOPs of one architecture at one image size, exact for any prompt length and cache length.

    Prefill FLOPs are a quadratic polynomial of the prompt length S (linear layers ~S, attention ~S^2, vision and
    LM head constant) and a decode step's FLOPs a linear one of the cache length L; both scale exactly with the
    batch. So three counted prefills and two counted decode steps at batch 1 determine every batch: the
    polynomials are evaluated with integer Newton differences (no rounding).
    """

    base_len: int
    prefill_0: int  # P(base_len)
    prefill_d1: int  # P(base_len + 1) - P(base_len)
    prefill_d2: int  # second difference
    decode_0: int  # D(base_len): one decode step with base_len tokens already in the cache
    decode_d1: int  # D(base_len + 1) - D(base_len)
    logits: str  # "last": LM head on the last prompt position (generate); "all": on every position

    @classmethod
    def fit(cls, config, image_size: tuple[int, int], logits: str = "last") -> "FlopModel":
        """Counted once per (architecture, image size, logits) and process: sweeps measure the same model often."""
        return _fit(config.to_json_string(use_diff=False), tuple(image_size), logits)

    def prefill(self, seq_len: int, batch: int = 1) -> int:
        k = seq_len - self.base_len
        return batch * (self.prefill_0 + k * self.prefill_d1 + k * (k - 1) // 2 * self.prefill_d2)

    def decode_step(self, cache_len: float, batch: int = 1) -> float:
        return batch * (self.decode_0 + (cache_len - self.base_len) * self.decode_d1)

    def decode(self, seq_len: int, steps: int, batch: int = 1) -> float:
        """The ``steps - 1`` decode steps that follow a prefill of ``seq_len`` (the prefill gives the first token).

        Step k sees a cache of seq_len + k - 1 tokens; by linearity their sum is (steps - 1) steps at the mean
        cache length seq_len + (steps - 2) / 2.
        """
        if steps <= 1:
            return 0.0
        return (steps - 1) * self.decode_step(seq_len + (steps - 2) / 2, batch)


@functools.lru_cache(maxsize=32)
def _fit(config_json: str, image_size: tuple[int, int], logits: str) -> FlopModel:
    model = _meta_twin(config_json)
    base = image_tokens(model.config, image_size[0]) + 1
    counts = [count_generation(model, **meta_inputs(1, base + k, image_size), logits=logits) for k in range(3)]
    p = [c.prefill for c in counts]
    d = counts[0]
    return FlopModel(base, p[0], p[1] - p[0], p[2] - 2 * p[1] + p[0], d.decode_at_prompt,
                     d.decode_at_prompt_plus_1 - d.decode_at_prompt, logits)


def architecture_flops(config, batch_size: int, text_tokens: int, logits: str = "all",
                       image_size: int | None = None) -> dict[str, Any]:
    """Direct count on the meta device for one prompt shape: what ``llava-accel flops`` prints."""
    positive_int(batch_size, "batch_size")
    non_negative_int(text_tokens, "text_tokens")
    one_of(logits, "logits", LOGITS)
    size = check_img_size(config, image_size) or native_image_size(config)
    n_image = image_tokens(config, size)  # another size than the native one interpolates CLIP's positions
    model = meta_twin(config)
    seq_len = n_image + text_tokens
    counts = count_generation(model, **meta_inputs(batch_size, seq_len, (size, size)), logits=logits)
    return {"batch_size": batch_size, "image_size": size, "image_tokens": n_image, "text_tokens": text_tokens,
            "sequence_length": seq_len, "prefill_flops": counts.prefill,
            "prefill_flops_per_sample": counts.prefill / batch_size,
            "decode_flops_per_token": counts.decode_at_prompt / batch_size,
            "parameters": sum(p.numel() for p in model.parameters()), "logits": logits,
            "counter": "torch.utils.flop_counter.FlopCounterMode", "flops_per_multiply_add": 2, "device": "meta"}


def fvcore_prefill_flops(model, inputs: dict[str, torch.Tensor], logits: str = "all") -> int:
    """Cross-check with fvcore: its count x 2 (fvcore counts one multiply-add as one FLOP).

    fvcore traces the model with ``torch.jit.trace`` (real tensors only, not meta), so it needs a wrapper that
    returns a tensor; it does not count SDPA kernels and drops layers whose output is unused (the last CLIP layer
    with ``vision_feature_layer=-2``), so it reads lower than FlopCounterMode.
    """
    from fvcore.nn import FlopCountAnalysis  # optional: not on every machine

    keep = 1 if logits == "last" else 0

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, pixel_values, attention_mask):
            return self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                              use_cache=False, return_dict=False, logits_to_keep=keep)[0]

    args = (inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"])
    analysis = FlopCountAnalysis(Logits(), args).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return 2 * int(analysis.total())
