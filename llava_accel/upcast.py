"""How a CPU backend's bf16 (or fp16) ``nn.Linear`` layers compute: many-row inputs in float32 on CPUs without native
bf16 arithmetic (the upcast), few-row inputs on our own kernel where it beats torch's.

The upcast. On a CPU without native bf16 (x86 without AVX512-BF16 or AMX) torch emulates a bf16 matmul, and the
emulation is slow for many rows: on a 2-core AVX2 EPYC the prefill GEMM of a 7B MLP weight (780 x 4096 x 11008) took
4.37 s in bf16 and 0.76 s in fp32. So each plain ``nn.Linear`` holding bf16 weights keeps them (half the memory of
fp32), and for an input of at least ``UPCAST_MIN_ROWS`` rows (a prefill, the image encoder) it upcasts the weight for
that one call, computes in fp32 and rounds the output back to bf16. The inputs are the same numbers (bf16 -> fp32 is
exact) and both paths accumulate in fp32, so only the order of the sums can differ. The upcast costs about as much as
a 20-row emulated bf16 matmul, hence the threshold (crossover measured at 32-64 rows on 7B shapes, 2 threads).

The few-row kernel (``llava_accel.gemv``). A decode step is bound by the weight bytes it reads, and torch's bf16
GEMV reads them at about half the memory bandwidth on both CPU kinds measured (``benchmarks/gemv.py``, 7B shapes,
2 threads): ours runs at the bandwidth floor, 1.5-2x faster at one row. Where the CPU has native bf16, torch's GEMM
overtakes our AVX2 kernel from 3-4 rows (``NATIVE_BF16_OWN_ROWS``) and not ours with the CPU's bf16 products up to
16 rows, the most measured (``HARDWARE_BF16_OWN_ROWS``); where torch emulates bf16 (16 rows: 81 ms against ours'
20 ms for 11008 x 4096), ours serves every row count below the upcast.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import gemv

UPCAST_MIN_ROWS = 64
NATIVE_BF16_OWN_ROWS = 2
HARDWARE_BF16_OWN_ROWS = 16  # 0.75-0.86x torch's time at 4 rows, 0.93x at 16 (benchmarks/gemv.py, AVX-512 EPYC)
# smaller weights keep torch's kernel: their time is call overhead, not bytes, and the lean layers fuse a small
# model's q/k/v and gate/up projections into one call each (seen on the 0.55M default: 2.76 ms a batch-4 step with
# torch's fused calls against 3.38 with ours unfused)
OWN_MIN_ELEMENTS = 1 << 20
LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class OwnKernel:
    layers: int  # how many layers run few-row inputs on our kernel
    max_rows: int  # up to how many rows


def own_kernel_max_rows(native_bf16: bool, speculative: bool = False) -> int:
    """Up to how many input rows our bf16 kernel serves (0: never, where it cannot run here): where it is the faster
    one, or, for ``speculative`` decoding, every row count below the upcast. A verification computes a tree of
    tokens in one forward, and greedy speculation is lossless only if each gets the bits a one-token decode step
    gives it: our kernel computes a row the same in any batch, torch's GEMM does not (the 7B's tokens diverged at
    the 7th with torch's native bf16 GEMM verifying 11 rows beside ours decoding one)."""
    if gemv.unavailable_reason() is not None:
        return 0
    if not native_bf16 or speculative:
        return UPCAST_MIN_ROWS - 1
    return HARDWARE_BF16_OWN_ROWS if gemv.native_bf16() else NATIVE_BF16_OWN_ROWS


def _forward(layer: nn.Linear, own_rows: int, upcast: bool, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if rows <= own_rows:
        y = gemv.bf16_linear(x, layer.weight)
        return (y if layer.bias is None else y + layer.bias.float()).to(x.dtype)
    if upcast and rows >= UPCAST_MIN_ROWS:
        bias = None if layer.bias is None else layer.bias.float()
        return F.linear(x.float(), layer.weight.float(), bias).to(x.dtype)
    return F.linear(x, layer.weight, layer.bias)


def _fits_own_kernel(layer: nn.Linear) -> bool:
    return (layer.weight.dtype == torch.bfloat16 and layer.weight.is_contiguous()
            and layer.in_features % gemv.BF16_MULTIPLE == 0 and layer.weight.numel() >= OWN_MIN_ELEMENTS)


def cpu_gemms(model: nn.Module, upcast: bool, own_max_rows: int) -> tuple[int, OwnKernel]:
    """Give every plain bf16/fp16 ``nn.Linear`` of ``model`` its CPU forward: with ``upcast``, inputs of
    ``UPCAST_MIN_ROWS`` rows or more in fp32; inputs of up to ``own_max_rows`` rows on our kernel (bf16 weights whose
    width it takes, of ``OWN_MIN_ELEMENTS`` or more). Quantised and fp32 layers keep their own. Returns (layers
    upcast, our kernel's share)."""
    upcast_layers = own_layers = 0
    for module in model.modules():
        if (type(module) is nn.Linear and type(module.weight) in (torch.Tensor, nn.Parameter)
                and module.weight.dtype in LOW_PRECISION):
            own_rows = own_max_rows if _fits_own_kernel(module) else 0
            if upcast or own_rows:
                module.forward = partial(_forward, module, own_rows, upcast)
                module.own_kernel_rows = own_rows  # the lean layers call this forward where it is set
            upcast_layers += upcast
            own_layers += own_rows > 0
    return upcast_layers, OwnKernel(own_layers, own_max_rows)
