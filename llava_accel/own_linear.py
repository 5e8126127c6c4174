"""What our quantised Linear layers (``int8.Int8Linear``, ``int4.Int4Linear``) share: made from an ``nn.Linear`` by
their ``quantize`` function, their tensors held as buffers whose first dimension is the output rows, and layers that
read one input run as one call.

Why the last: each call of our kernels from Python costs tens of microseconds beyond its weight bytes (the wrapper,
an OpenMP fork, the ramp of the memory streams), and a decode step of the 7B makes seven a layer. Its q/k/v and
gate/up projections read the same input: ``store_together`` puts the layers of one parent module and input width into
shared buffers (each layer keeps a view of its own rows: the same values in the same memory), and ``join`` makes one
layer over adjacent rows, which the lean decoder (``lean.layer``) calls once instead of three times or twice. Each
output row is computed alone, so the joined layer's outputs are the same bits.

Their float tensors (scales) are held as their bits in an integer dtype (``as_bits``): casting the model
(``model.to(torch.bfloat16)``, as loading a backend on an already quantised model does) converts every floating
buffer, and the kernels would then read bf16 bits as fp16 or fp32 scales.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bits as an integer tensor of the same element size (a view), which no cast of the model
    converts; other tensors as they are."""
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()]) if t.is_floating_point() else t


QUANTIZE_ROWS = 256


class OwnLinear(nn.Module):
    """A bias-optional Linear layer over quantised weights; subclasses set ``multiple`` and ``quantize`` and take
    their buffers, then the bias, in their constructor."""

    multiple: int  # the input width must be a multiple of this
    parts: tuple[int, ...] = ()  # a joined layer's: the output widths of the layers it joins

    @staticmethod
    def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> OwnLinear:
        """Quantised ``QUANTIZE_ROWS`` rows at a time (each row's numbers depend on that row alone), so that the
        float temporaries of the rounding stay small: whole, those of one 7B MLP weight were 180 MB each in fp32,
        and they set the int4 load's peak RSS."""
        chunks = [cls.quantize(rows) for rows in linear.weight.detach().split(QUANTIZE_ROWS)]
        return cls(*(torch.cat(parts) for parts in zip(*chunks)), linear.bias)

    @classmethod
    def supports(cls, layer: nn.Module) -> bool:
        """Whether a Linear layer's input width suits the kernel (others stay in full precision)."""
        return layer.in_features % cls.multiple == 0

    def tensors(self) -> list[torch.Tensor]:
        """The weight's tensors and the bias: what the layer's bytes are."""
        return [*self.buffers(recurse=False), *([] if self.bias is None else [self.bias])]

    @classmethod
    def join(cls, layers: Sequence[nn.Module]) -> OwnLinear | None:
        """One layer whose outputs are ``layers``' side by side, over their rows where those lie one after the other
        in shared buffers (``store_together``), without a copy; None where they do not, or hold a bias."""
        if not all(type(layer) is cls and layer.bias is None for layer in layers):
            return None
        views = []
        for name, first in layers[0].named_buffers(recurse=False):
            parts = [getattr(layer, name) for layer in layers]
            if not all(p.is_contiguous() for p in parts) or any(
                    b.data_ptr() != a.data_ptr() + a.nbytes or b.untyped_storage().data_ptr() !=
                    a.untyped_storage().data_ptr() for a, b in zip(parts, parts[1:])):
                return None
            views.append(first.as_strided((sum(p.shape[0] for p in parts), *first.shape[1:]), first.stride()))
        joined = cls(*views, None)
        joined.parts = tuple(layer.out_features for layer in layers)
        return joined


def store_together(layers: Sequence[OwnLinear]) -> None:
    """Moves the buffers of ``layers`` (one type, one input width) into shared tensors, in order, each layer keeping
    a view of its rows, so that ``join`` can run any adjacent run of them as one layer."""
    for name, _ in layers[0].named_buffers(recurse=False):
        shared = torch.cat([getattr(layer, name) for layer in layers])
        start = 0
        for layer in layers:
            rows = getattr(layer, name).shape[0]
            setattr(layer, name, shared[start:start + rows])
            start += rows
