"""A Llama decoder layer as one plain function over the weights of transformers' own ``LlamaDecoderLayer``.

Why: on a CPU a tiny model's layer costs ~1 ms through transformers' module stack (call hooks, deprecation
wrappers, attention dispatch) and a fraction of it as plain tensor ops, and speculative decoding runs several head
and target forwards per emitted token, so the number of tensor ops per layer decides the speed-up. The arithmetic
is transformers' (RMSNorm in float32, rotate-half RoPE, SDPA with an explicit mask); the weights stay in the HF
modules (state dicts, loading and ``.to()`` are unchanged) and are only read here.

For small models (``hidden_size <= FUSE_MAX_HIDDEN``) the q/k/v and gate/up projections are fused into one matmul
each: on the CPU this gives bit-identical results (each output is the same dot product) with fewer ops; for large
models it would only double the memory of those weights, so they stay separate. A projection whose weights are
quantised (``llava_accel.quantize``) is called as its module, so its own kernel runs, and is never copied; our own
quantised layers (``llava_accel.own_linear``) store q/k/v and gate/up side by side, and each such group runs as one
call of our kernel (the 7B's int8 decode step: 7 calls a layer -> 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import gemv
from ..own_linear import OwnLinear

FUSE_MAX_HIDDEN = 1024
Projection = Callable[[torch.Tensor], torch.Tensor]  # a Linear layer's forward
# fp32 GEMV threading (see RowSplitLinear): weights from this many elements, inputs up to this many rows
SPLIT_MIN_ELEMENTS = 1 << 20
SPLIT_MAX_ROWS = 1  # measured faster at 1 row on every shape; at 2-4 rows faster on some, slower on others


class RowSplitLinear:
    """``F.linear`` for a few input rows of an fp32 weight on a multi-core CPU, split over the cores.

    Why: torch's fp32 ``F.linear`` with 1-4 input rows (the decode GEMV, a weight-bandwidth-bound op) runs on one
    core (MKL's sgemv; seen on AMD EPYC, AVX2 and AVX-512 alike: the second core's CPU time stays 0), from about 5-8
    rows it uses all. Viewing the weight as ``parts`` blocks of output rows and running them as one ``bmm`` lets
    torch hand one block to each core; every output is the same dot product computed by the same kernel, so the
    result is bit-identical (checked on LLaMA-7B and 250M-model shapes, 1-4 rows) and no weight is copied. Measured
    on a 2-core AVX2 EPYC (docs/backends.md): 1.2-1.7x faster per projection at one row."""

    def __init__(self, weight: torch.Tensor, parts: int) -> None:
        out, inp = weight.shape
        self.weight, self.parts = weight, parts
        self.blocks = weight.view(parts, out // parts, inp).transpose(1, 2)  # a view: no copy, gradients flow

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        inp = x.shape[-1]
        rows = x.numel() // inp
        if rows > SPLIT_MAX_ROWS:
            return F.linear(x, self.weight)
        y = torch.bmm(x.reshape(1, rows, inp).expand(self.parts, rows, inp), self.blocks)
        return y.transpose(0, 1).reshape(*x.shape[:-1], self.weight.shape[0])


def projection(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Projection:
    """``F.linear`` with these weights; a ``RowSplitLinear`` where one would leave cores idle (fp32 on the CPU,
    several torch threads, a large weight whose rows split evenly, no bias)."""
    parts = torch.get_num_threads()
    if (weight.dtype == torch.float32 and weight.device.type == "cpu" and parts > 1 and bias is None
            and weight.is_contiguous()
            and weight.numel() >= SPLIT_MIN_ELEMENTS and weight.shape[0] % parts == 0):
        return RowSplitLinear(weight, parts)
    return partial(F.linear, weight=weight, bias=bias)


@dataclass(frozen=True)
class LayerWeights:
    input_norm: torch.Tensor | None  # None: the EAGLE head's layer has no input norm
    post_norm: torch.Tensor
    eps: float
    qkv: list[Projection]  # [q, k, v] projections, or one fused [qkv]
    o: Projection
    gate_up: list[Projection]  # [gate, up], or one fused [gate|up]
    down: Projection
    act: Callable[[torch.Tensor], torch.Tensor]
    heads: int
    kv_heads: int
    head_dim: int
    scale: float
    index: int  # the layer's index in its cache


def _plain(module: Any) -> bool:
    """An ``nn.Linear`` holding ordinary tensors, computed by torch's kernel for the few rows these layers see
    (quantised layers are other modules, or hold tensor subclasses; ``llava_accel.upcast`` marks those whose few-row
    inputs go to our kernel)."""
    return (type(module) is torch.nn.Linear and type(module.weight) in (torch.Tensor, torch.nn.Parameter)
            and not getattr(module, "own_kernel_rows", 0))


def module_projection(module: Any) -> Projection:
    """``F.linear`` over the module's own weights (no module call overhead), the forward ``llava_accel.upcast`` gave
    it where that runs our kernel, or the module itself when quantised."""
    if _plain(module):
        return projection(module.weight, module.bias)
    return vars(module).get("forward", module)


def _joined(modules: list[Any]) -> list[Projection]:
    """One call for layers that read one input where our quantised layers lie together (``OwnLinear.join``: the
    same bits, no copy), else one call per layer."""
    joined = type(modules[0]).join(modules) if isinstance(modules[0], OwnLinear) else None
    return [joined] if joined is not None else [module_projection(m) for m in modules]


def _fused(modules: list[Any]) -> list[Projection]:
    weight = torch.cat([m.weight.detach() for m in modules])
    bias = None if modules[0].bias is None else torch.cat([m.bias.detach() for m in modules])
    return [projection(weight, bias)]


def layer_weights(layer: Any, fuse: bool | None = None) -> LayerWeights:
    """Read a transformers ``LlamaDecoderLayer`` once (again after moving or reloading it). ``fuse``: default for
    small models; a fused copy is not a parameter, so training reads the layer with ``fuse=False``."""
    attn, mlp = layer.self_attn, layer.mlp
    projections = [attn.q_proj, attn.k_proj, attn.v_proj]
    plain = all(map(_plain, projections + [mlp.gate_proj, mlp.up_proj]))
    fuse = plain and (attn.q_proj.in_features <= FUSE_MAX_HIDDEN if fuse is None else fuse)
    return LayerWeights(
        input_norm=getattr(layer.input_layernorm, "weight", None), post_norm=layer.post_attention_layernorm.weight,
        eps=layer.post_attention_layernorm.variance_epsilon,
        qkv=_fused(projections) if fuse else _joined(projections),
        o=module_projection(attn.o_proj),
        gate_up=_fused([mlp.gate_proj, mlp.up_proj]) if fuse else _joined([mlp.gate_proj, mlp.up_proj]),
        down=module_projection(mlp.down_proj), act=mlp.act_fn, heads=layer.self_attn.config.num_attention_heads,
        kv_heads=layer.self_attn.config.num_key_value_heads, head_dim=attn.head_dim, scale=attn.scaling,
        index=attn.layer_idx)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:  # one fused op, bit-identical to the formula below in float32
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _signed(sin: torch.Tensor) -> torch.Tensor:
    """rotate_half(x) * sin == roll(x, half) * signed(sin), exactly: the sign moves from x to sin."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)


def rope(rotary: Any, like: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) of ``positions`` from transformers' rotary embedding, shaped to broadcast over heads."""
    cos, sin = rotary(like, positions)
    return cos.unsqueeze(1), _signed(sin).unsqueeze(1)


class RopeTable:
    """``rope`` for positions 0 .. n-1, computed once and looked up per forward (the same values, fewer ops)."""

    def __init__(self, rotary: Any, like: torch.Tensor, n: int) -> None:
        cos, sin = rotary(like, torch.arange(n, device=like.device)[None])
        self.cos, self.sin = cos[0], _signed(sin[0])

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.embedding(positions, self.cos).unsqueeze(1), F.embedding(positions, self.sin).unsqueeze(1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, heads, n, d = x.shape
    return x[:, :, None].expand(b, heads, groups, n, d).reshape(b, heads * groups, n, d)


def decoder_layer(w: LayerWeights, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                  cache: Any = None) -> torch.Tensor:
    """One layer on ``x`` (batch, n, h). ``cos_sin``: from ``rope`` or a ``RopeTable``; ``mask``: (batch, 1, n,
    keys) bool, True where a query may attend; ``cache``: stores the new keys/values and returns all keys/values so
    far."""
    b, n, _ = x.shape
    h = rms_norm(x, w.input_norm, w.eps) if w.input_norm is not None else x
    qkv = torch.cat([p(h) for p in w.qkv], -1) if len(w.qkv) > 1 else w.qkv[0](h)
    qkv = qkv.view(b, n, w.heads + 2 * w.kv_heads, w.head_dim).transpose(1, 2)
    split = w.heads + w.kv_heads
    qk = _rotate(qkv[:, :split], *cos_sin)  # q and k heads in one go
    q, k, v = qk[:, :w.heads], qk[:, w.heads:], qkv[:, split:]
    if cache is not None:
        k, v = cache.update(k, v, w.index)
    groups = w.heads // w.kv_heads
    if gemv.attends(q, k, v, mask):  # a decode step or a draft tree on the CPU: our kernel
        attn = gemv.attend(q, k, v, mask, w.scale)
    else:
        attn = F.scaled_dot_product_attention(q, _repeat_kv(k, groups), _repeat_kv(v, groups), attn_mask=mask,
                                              scale=w.scale)
    x = x + w.o(attn.transpose(1, 2).reshape(b, n, -1))
    h = rms_norm(x, w.post_norm, w.eps)
    if len(w.gate_up) > 1:
        gate, up = (p(h) for p in w.gate_up)
    else:
        gate, up = w.gate_up[0](h).chunk(2, dim=-1)
    return x + w.down(w.act(gate) * up)
