"""int4 weights in llama.cpp's Q4_0 layout, run by our own kernels (``llava_accel.gemv``): ``quantize="int4"`` on CPU.

Why: torchao's CPU int4 kernel decoded the 7B at 6x its bandwidth floor on a 2-core AVX2 EPYC, slower than bf16
weights; llama.cpp's Q4_0 at 2x (docs/backends.md). Q4_0: groups of 32 weights along the input, one fp16 scale each
(``d`` = the group's weight of largest magnitude / -8), each weight stored in 4 bits as ``q = round(w / d) + 8``
clamped to 0..15, so ``w ~ (q - 8) * d``: 4.5 bits a weight. Inputs of fewer than ``UPCAST_MIN_ROWS`` rows (decode
steps) run the int4 kernel; more rows (a prefill) dequantise the layer for that one call and run torch's GEMM: in
bf16 where the input is bf16 and the CPU has native bf16 (AMX or AVX-512 BF16 under oneDNN), else in fp32 as
``llava_accel.upcast`` does for bf16 weights. Same layout and rounding as llama.cpp's ``quantize_row_q4_0``; where the
kernel has AVX-512 VNNI, the same bytes and scales are then moved into ``gemv.q4_blocks``' layout (16 rows a block),
which its loop reads 1.33x faster.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import gemv
from .cpuinfo import cpu_has_native_bf16
from .own_linear import OwnLinear, as_bits
from .upcast import UPCAST_MIN_ROWS

GROUP = gemv.Q4_GROUP


def quantize_q4_0(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 (n, k/2), scales fp16 (n, k/32)) of a float weight (n, k), ``k`` a multiple of 32."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // GROUP, GROUP)
    extreme = w.gather(-1, w.abs().argmax(-1, keepdim=True))  # signed: the scale maps it to -8 exactly
    d = extreme / -8
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = (w * inverse + 8.5).floor().clamp(0, 15).to(torch.uint8)
    packed = q[..., :GROUP // 2] | (q[..., GROUP // 2:] << 4)
    return packed.reshape(n, k // 2).contiguous(), d.reshape(n, k // GROUP).to(torch.float16)


class Int4Linear(OwnLinear):
    """A bias-optional Linear layer holding Q4_0 weights; outputs in the input's dtype."""

    group_size = multiple = GROUP
    quantize = staticmethod(quantize_q4_0)

    def __init__(self, packed: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 blocked: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], packed.shape[1] * 2
        self.blocked = blocked  # packed and scales in gemv's blocked layout, else in Q4_0's
        self.register_buffer("packed", packed)
        self.register_buffer("scales", as_bits(scales))  # fp16, as int16 bits
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int4Linear:
        """In the blocked layout where the kernel reads it (AVX-512 VNNI) and the rows fill its blocks."""
        layer = super().from_linear(linear)
        if gemv.q4_blocked_kernel() and layer.out_features % gemv.Q4_BLOCK == 0:
            layer.packed, layer.scales = gemv.q4_blocks(layer.packed), gemv.q4_blocks(layer.scales)
            layer.blocked = True
        return layer

    @classmethod
    def join(cls, layers: Sequence[nn.Module]) -> Int4Linear | None:
        joined = super().join(layers) if len({getattr(layer, "blocked", None) for layer in layers}) == 1 else None
        if joined is not None:
            joined.blocked = layers[0].blocked
        return joined

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight these int4 values stand for."""
        return gemv.q4_dequantize(self.packed, self.scales, self.blocked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() < UPCAST_MIN_ROWS * self.in_features:
            if self.bias is None and x.dtype == torch.bfloat16:  # rounded to bf16 by the kernel
                return gemv.q4_linear(x, self.packed, self.scales, self.blocked, bf16_out=True)
            y = gemv.q4_linear(x, self.packed, self.scales, self.blocked)
            return (y if self.bias is None else y + self.bias.float()).to(x.dtype)
        # many rows: torch's GEMM on the dequantised weight, in bf16 where x is and the CPU multiplies bf16 itself
        dtype = torch.bfloat16 if x.dtype == torch.bfloat16 and cpu_has_native_bf16() else torch.float32
        xd, w = x.to(dtype), self.dequantize().to(dtype)
        if self.parts:  # joined: each layer's GEMM alone, as unjoined (a GEMM's last bits depend on its width)
            return torch.cat([F.linear(xd, part) for part in w.split(self.parts)], -1).to(x.dtype)
        return F.linear(xd, w, None if self.bias is None else self.bias.to(dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        layout = ", blocked" if self.blocked else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, Q4_0 (groups of {GROUP}{layout})"
