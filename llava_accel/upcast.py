"""bf16 (or fp16) weights whose many-row matmuls run in float32, on CPUs without native bf16 arithmetic.

Why: on such a CPU (x86 without AVX512-BF16 or AMX) torch emulates a bf16 matmul, and the emulation is slow for
many rows: on a 2-core AVX2 EPYC the prefill GEMM of a 7B MLP weight (780 x 4096 x 11008) took 4.37 s in bf16 and
0.76 s in fp32, while the one-row decode GEMV is bandwidth-bound and faster in bf16 (8.0 ms against 10.1 ms in fp32:
half the bytes). So each plain ``nn.Linear`` holding bf16 weights keeps them (half the memory of fp32), and for an
input of at least ``UPCAST_MIN_ROWS`` rows (a prefill, the image encoder) it upcasts the weight for that one call,
computes in fp32 and rounds the output back to bf16. The inputs are the same numbers (bf16 -> fp32 is exact) and
both paths accumulate in fp32, so only the order of the sums can differ. Decode steps (a few rows) keep the bf16
kernel. The upcast costs about as much as a 20-row bf16 matmul, hence the threshold (crossover measured at 32-64
rows on 7B shapes, 2 threads; both costs scale with the weight's size, so the crossover does not depend on it).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

UPCAST_MIN_ROWS = 64
LOW_PRECISION = (torch.bfloat16, torch.float16)


def _forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.numel() < UPCAST_MIN_ROWS * x.shape[-1]:
        return F.linear(x, layer.weight, layer.bias)
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias).to(x.dtype)


def upcast_gemms(model: nn.Module) -> int:
    """Make every plain bf16/fp16 ``nn.Linear`` of ``model`` compute inputs of ``UPCAST_MIN_ROWS`` rows or more in
    fp32 (quantised layers keep their own kernels). Returns how many layers now do."""
    count = 0
    for module in model.modules():
        if (type(module) is nn.Linear and type(module.weight) in (torch.Tensor, nn.Parameter)
                and module.weight.dtype in LOW_PRECISION):
            module.forward = partial(_forward, module)
            count += 1
    return count
