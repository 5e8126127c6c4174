"""int8 weights with activations rounded per call, run by our own kernel (``llava_accel.gemv``): ``quantize=
"int8-dynamic"`` on CPU.

Why: torch's dynamic quantisation (fbgemm) read the 7B's int8 weights in a decode step no faster than llama.cpp's
q8_0, and it holds them packed in its own format, which only its kernel reads (docs/backends.md). Same scheme as
fbgemm's, so the same numbers to within rounding: per output row, a symmetric int8 weight ``q = round(w / s)`` with
``s = max|w| / 127``; per input row and call, x rounded to 7-bit unsigned integers with a zero point (fbgemm's
``reduce_range``: it keeps AVX2's byte products from saturating). The products and their sums are exact integer
arithmetic, so a row's output is the same bits whatever it is batched with and whichever GEMM summed it: our kernel
for a decode step (at the bandwidth floor), and for a prefill either ours (AVX2: a 780-row GEMM in 1.14-1.22x
fbgemm's time) or, on AVX-512 VNNI or AMX, torch's int8 GEMM between our rounding and our scaling (``gemv.i8_linear``).
"""

from __future__ import annotations

import torch
from torch import nn

from . import gemv
from .own_linear import OwnLinear, as_bits


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 weight (n, k), fp32 scales (n,), int32 row sums (n,)) of a float weight (n, k)."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1) / 127
    inverse = torch.where(scales == 0, torch.zeros_like(scales), 1 / scales)
    q = (w * inverse[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, scales, q.sum(dim=1, dtype=torch.int32)


class Int8Linear(OwnLinear):
    """A bias-optional Linear layer holding int8 weights; outputs in the input's dtype."""

    multiple = gemv.I8_MULTIPLE
    quantize = staticmethod(quantize_int8)

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, sums: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scales", as_bits(scales))  # fp32, as int32 bits
        self.register_buffer("sums", sums)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight these int8 values stand for."""
        return self.weight.float() * self.scales.view(torch.float32)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = gemv.i8_linear(x, self.weight, self.scales, self.sums)
        return (y if self.bias is None else y + self.bias.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per row, x in 7 bits per row"
