"""``no_weights``: a model whose configuration ships with the package (or sits in a local folder), with random weights
made on the spot, for speed and memory runs where its checkpoint is absent (optimum-benchmark's name for it).

The model is built on the meta device (no memory), then each parameter is allocated directly in the target dtype on
the target device and filled from a seeded generator, one block (a decoder or encoder layer, or a module outside
them) at a time. A float32 copy of the 7B (28 GB) never exists, and with ``quantize`` each block is quantised as soon
as it is made, so only one block is ever held in full precision. Before anything is allocated, the weights' size is
compared with the memory free on the device, and a model that cannot fit is refused in one line that says how much
it needs.

Initialisation (the same on every transformers version): matrices and embeddings normal(0, ``initializer_range``),
norm scales one, biases zero, other vectors normal. Same seed and device type: the same weights.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import LlavaAccelError
from ..hugepages import advise
from ..metrics.memory import proc_kib_field
from ..quantize import BlockQuantizer
from .architecture import SHIPPED_CONFIGS

# called with the model and the names of the modules whose weights were just made (one block)
BlockHook = Callable[[nn.Module, list[str]], None]
# bytes per weight of a module (name, module) that will be quantised; None: it stays in the model's dtype
QuantizedBytes = Callable[[str, nn.Module], "float | None"]


class NoWeightsError(LlavaAccelError):
    """``no_weights`` for a model whose configuration is not known offline, or that does not fit in memory."""


def no_weights_config(model: str) -> Any:
    """The ``LlavaConfig`` of ``model``: the shipped copy of a known hub id, or a local folder's config.json."""
    from .architecture import load_config

    if model in SHIPPED_CONFIGS or (Path(model).is_dir() and (Path(model) / "config.json").exists()):
        return load_config(model)
    raise NoWeightsError(f"no_weights needs a model whose configuration ships with llava_accel "
                         f"({', '.join(SHIPPED_CONFIGS)}) or a local folder with a config.json; got '{model}'")


def available_bytes(device: torch.device) -> int:
    """Memory that can be allocated now on ``device``: free GPU memory, or the kernel's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = proc_kib_field("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _blocks(model: nn.Module) -> dict[str, list[str]]:
    """Module names with parameters of their own, grouped into blocks: each element of a ``ModuleList`` (a layer)
    is one block, every other module its own."""
    lists = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    blocks: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        outer = next((lst for lst in lists if name.startswith(lst + ".")), None)
        block = f"{outer}.{name[len(outer) + 1:].split('.')[0]}" if outer else name
        blocks.setdefault(block, []).append(name)
    return blocks


def weight_bytes(model: nn.Module, dtype: torch.dtype, quantized_bytes: QuantizedBytes) -> tuple[int, int]:
    """(bytes of all weights once made, bytes of the largest block in ``dtype``) for a model on the meta device.
    ``quantized_bytes(name, module)``: bytes per weight of a module that will be quantised, None for the others."""
    modules = dict(model.named_modules())
    total, largest = 0.0, 0
    for names in _blocks(model).values():
        full = 0
        for name in names:
            per_weight = quantized_bytes(name, modules[name])
            for p in modules[name].parameters(recurse=False):
                full += p.numel() * dtype.itemsize
                total += p.numel() * (dtype.itemsize if per_weight is None or p.dim() < 2 else per_weight)
        largest = max(largest, full)
    return int(total), largest


def memory_need(model: nn.Module, device: torch.device, dtype: torch.dtype,
                quantizer: BlockQuantizer | None = None) -> tuple[int, int, int]:
    """(bytes of the weights, bytes of the largest block in ``dtype``, bytes available on ``device``) for a model on
    the meta device: it fits where the first two together are at most the third."""
    need, block = weight_bytes(model, dtype, quantizer.bytes_per_weight if quantizer else lambda name, module: None)
    return need, block, available_bytes(device)


def check_memory(model_id: str, model: nn.Module, device: torch.device, dtype: torch.dtype,
                 quantizer: BlockQuantizer | None = None) -> int:
    """Refuse, in one line, before anything is allocated, a model whose weights do not fit in the memory free on
    ``device``. Returns the bytes the weights need."""
    need, block, free = memory_need(model, device, dtype, quantizer)
    if need + block > free:
        what = f"in {_name(dtype)}" + (f" with quantize={quantizer.mode}" if quantizer else "")
        raise NoWeightsError(f"no_weights: {model_id} {what} needs about {(need + block) / 2**30:.1f} GiB for its "
                             f"weights ({need / 2**30:.1f} GiB, plus one block in {_name(dtype)} while it is made) and "
                             f"{device.type} has {free / 2**30:.1f} GiB available; free memory, or pass a smaller "
                             f"dtype or a quantize mode")
    return need


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _fill(name: str, param: torch.Tensor, std: float, generator: torch.Generator) -> None:
    if param.dim() >= 2:
        param.normal_(0.0, std, generator=generator)
    elif name.endswith("bias"):
        param.zero_()
    elif name.endswith("weight"):  # a norm's scale
        param.fill_(1.0)
    else:  # CLIP's class embedding
        param.normal_(0.0, std, generator=generator)


def materialize(model: nn.Module, device: torch.device, dtype: torch.dtype, seed: int = 0,
                on_block: BlockHook | None = None) -> None:
    """Give every parameter of a meta-device ``model`` memory on ``device`` in ``dtype`` and seeded random values,
    block by block, calling ``on_block`` after each (e.g. to quantise it before the next one is made)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    for names in _blocks(model).values():
        _make_block(model, names, device, dtype, generator)  # a function: no local keeps a made tensor alive
        if on_block is not None:
            on_block(model, names)


def _make_block(model: nn.Module, names: list[str], device: torch.device, dtype: torch.dtype,
                generator: torch.Generator) -> None:
    for name in names:
        module = model.get_submodule(name)  # looked up now: holding the modules would keep those quantised since
        std = _initializer_range(model, name)
        for pname, param in list(module.named_parameters(recurse=False)):
            made = advise(torch.empty(param.shape, dtype=dtype if param.is_floating_point() else param.dtype,
                                      device=device))  # 2 MiB pages from the first write: nothing to move later
            _fill(pname, made, std, generator)
            module._parameters[pname] = nn.Parameter(made, requires_grad=False)


def _initializer_range(model: nn.Module, name: str) -> float:
    config = model.config
    sub = config.vision_config if ".vision_tower." in f".{name}." else config.text_config
    return getattr(sub, "initializer_range", None) or getattr(config, "initializer_range", None) or 0.02


def _buffers_to(model: nn.Module, device: torch.device) -> None:
    """Buffers (rotary tables, position ids) were made on the CPU, in their own dtype: moved, never cast."""
    for module in model.modules():
        for bname, buf in list(module._buffers.items()):
            if buf is not None and buf.device != device:
                module._buffers[bname] = buf.to(device)


def random_model(model_id: str, device: torch.device, dtype: torch.dtype, attention: str, seed: int = 0,
                 quantizer: BlockQuantizer | None = None) -> tuple[Any, Any, float]:
    """(model, processor, seconds spent making the weights) for ``model_id`` with random weights; ``quantizer``
    quantises each block as it is made."""
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    from .processor import llava_processor

    config = no_weights_config(model_id)
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (rotary tables) real, on the CPU
        net = LlavaForConditionalGeneration(config)
    check_memory(model_id, net, device, dtype, quantizer)
    try:
        net.set_attn_implementation(attention)
    except ImportError as exc:
        raise LlavaAccelError(f"attention '{attention}' cannot be used here: {str(exc).splitlines()[0]}") from None
    start = time.perf_counter()
    materialize(net, device, dtype, seed, quantizer)
    _buffers_to(net, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    processor = llava_processor(config)
    net.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return net.eval(), processor, seconds
