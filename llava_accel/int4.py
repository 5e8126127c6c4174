"""int4 weights in llama.cpp's Q4_0 layout, run by our own kernels (``llava_accel.gemv``): ``quantize="int4"`` on CPU.

Why: torchao's CPU int4 kernel decoded the 7B at 6x its bandwidth floor on a 2-core AVX2 EPYC, slower than bf16
weights; llama.cpp's Q4_0 at 2x (docs/backends.md). Q4_0: groups of 32 weights along the input, one fp16 scale each
(``d`` = the group's weight of largest magnitude / -8), each weight stored in 4 bits as ``q = round(w / d) + 8``
clamped to 0..15, so ``w ~ (q - 8) * d``: 4.5 bits a weight. Inputs of fewer than ``UPCAST_MIN_ROWS`` rows (decode
steps) run the int4 kernel; more rows (a prefill) dequantise the layer to fp32 for that one call and run torch's
GEMM, as ``llava_accel.upcast`` does for bf16 weights. Same layout and rounding as llama.cpp's
``quantize_row_q4_0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import gemv
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

    def __init__(self, packed: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = packed.shape[0], packed.shape[1] * 2
        self.register_buffer("packed", packed)
        self.register_buffer("scales", as_bits(scales))  # fp16, as int16 bits
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight these int4 values stand for."""
        return gemv.q4_dequantize(self.packed, self.scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() < UPCAST_MIN_ROWS * self.in_features:
            y = gemv.q4_linear(x, self.packed, self.scales)
            y = y if self.bias is None else y + self.bias.float()
        elif self.parts:  # joined: each layer's GEMM alone, as unjoined (a GEMM's last bits depend on its width)
            y = torch.cat([F.linear(x.float(), w) for w in self.dequantize().split(self.parts)], -1)
        else:
            y = F.linear(x.float(), self.dequantize(), None if self.bias is None else self.bias.float())
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, Q4_0 (groups of {GROUP})"
