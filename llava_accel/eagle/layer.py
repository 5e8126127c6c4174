"""A Llama decoder layer as one plain function over the weights of transformers' own ``LlamaDecoderLayer``.

Why: on a CPU a tiny model's layer costs ~1 ms through transformers' module stack (call hooks, deprecation
wrappers, attention dispatch) and ~0.3 ms as plain tensor ops, and speculative decoding runs several head and
target forwards per emitted token. The ops are the ones transformers runs (its RMSNorm in float32, rotate-half
RoPE, SDPA with an explicit mask), so the verification computes what ``generate`` computes; the weights stay in
the HF modules (state dicts, loading and ``.to()`` are unchanged) and are only read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LayerWeights:
    input_norm: torch.Tensor | None  # None: the EAGLE head's layer has no input norm
    post_norm: torch.Tensor
    eps: float
    q: tuple[torch.Tensor, torch.Tensor | None]
    k: tuple[torch.Tensor, torch.Tensor | None]
    v: tuple[torch.Tensor, torch.Tensor | None]
    o: tuple[torch.Tensor, torch.Tensor | None]
    gate: tuple[torch.Tensor, torch.Tensor | None]
    up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]
    act: Callable[[torch.Tensor], torch.Tensor]
    head_dim: int
    kv_groups: int
    scale: float
    index: int  # the layer's index in its cache


def _linear(module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    return module.weight, module.bias


def layer_weights(layer: Any) -> LayerWeights:
    """Read a transformers ``LlamaDecoderLayer`` once (call again after moving or reloading the module)."""
    attn, mlp = layer.self_attn, layer.mlp
    norm = layer.input_layernorm
    return LayerWeights(
        input_norm=getattr(norm, "weight", None), post_norm=layer.post_attention_layernorm.weight,
        eps=layer.post_attention_layernorm.variance_epsilon,
        q=_linear(attn.q_proj), k=_linear(attn.k_proj), v=_linear(attn.v_proj), o=_linear(attn.o_proj),
        gate=_linear(mlp.gate_proj), up=_linear(mlp.up_proj), down=_linear(mlp.down_proj), act=mlp.act_fn,
        head_dim=attn.head_dim, kv_groups=attn.num_key_value_groups, scale=attn.scaling, index=attn.layer_idx)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, heads, n, d = x.shape
    return x[:, :, None].expand(b, heads, groups, n, d).reshape(b, heads * groups, n, d)


def decoder_layer(w: LayerWeights, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                  cache: Any = None) -> torch.Tensor:
    """One layer on ``x`` (batch, n, h). ``rope``: (cos, sin) of the tokens' positions; ``mask``: (batch, 1, n,
    keys) bool, True where a query may attend; ``cache``: stores the new keys/values and returns all keys/values."""
    b, n, _ = x.shape
    h = rms_norm(x, w.input_norm, w.eps) if w.input_norm is not None else x
    q = F.linear(h, *w.q).view(b, n, -1, w.head_dim).transpose(1, 2)
    k = F.linear(h, *w.k).view(b, n, -1, w.head_dim).transpose(1, 2)
    v = F.linear(h, *w.v).view(b, n, -1, w.head_dim).transpose(1, 2)
    cos, sin = rope[0].unsqueeze(1), rope[1].unsqueeze(1)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, w.index)
    attn = F.scaled_dot_product_attention(q, _repeat_kv(k, w.kv_groups), _repeat_kv(v, w.kv_groups),
                                          attn_mask=mask, scale=w.scale)
    x = x + F.linear(attn.transpose(1, 2).reshape(b, n, -1), *w.o)
    h = rms_norm(x, w.post_norm, w.eps)
    return x + F.linear(w.act(F.linear(h, *w.gate)) * F.linear(h, *w.up), *w.down)
