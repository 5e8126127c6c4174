"""Quantised weights as a backend option: ``quantize="int8" | "int8-dynamic" | "int4"``, applied after loading.

A decode step reads every weight of the language model once, so its time is bound by weight bytes: int8 halves them
against 16-bit weights, int4 halves them again. Each (mode, device) pair is served by the library (or our own
kernels, ``llava_accel.int8`` and ``llava_accel.int4``) that has the fastest kernel for it (chosen by measurement, see docs/backends.md); a
pair without one is refused at load time, in one line, before the model is loaded. The vision tower and projector
run once per image, so they stay in full precision unless ``include_vision=True``.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, Iterator

import torch
from torch import nn

from . import gemv
from .errors import BackendUnavailableError, install_hint
from .int4 import Int4Linear
from .int8 import Int8Linear
from .own_linear import OwnLinear, store_together

MODES = ("int8", "int8-dynamic", "int4")
INT4_GROUP_SIZES = (128, 64, 32)  # the largest one that divides a layer's input width is used (gpt-fast: 128)
LANGUAGE_PARTS = ("model.language_model", "lm_head")
VISION_PARTS = ("model.vision_tower", "model.multi_modal_projector")
INSTALL_HINT = install_hint("quantize")


@dataclass(frozen=True)
class Recipe:
    """How one mode is applied on one device type: which library, which call, which compute dtypes it has kernels
    for."""

    mode: str
    device: str
    package: str  # the pip distribution providing it
    module: str | None  # what it is imported as (None: part of llava_accel)
    method: str  # what is called, in words
    dtypes: tuple[torch.dtype, ...]  # activation dtypes with a fast kernel (others are refused, not run slowly)
    apply: Callable[[nn.Module, list[str]], None]  # (model, names of the Linear layers to quantise)
    weight_bytes: float  # bytes a quantised weight takes, scales included
    steps_aside: Callable[[], str | None] = lambda: None  # why it cannot run here (then the next one serves)


@dataclass
class QuantizeReport:
    """What quantisation did to the model: enough to verify it was not a silent no-op."""

    mode: str
    library: str  # "<package> <version>"
    method: str
    parts: list[str]  # module prefixes that were quantised
    quantized_linears: int
    skipped_linears: list[str] = field(default_factory=list)  # left in full precision (no kernel for their shape)
    weight_bytes_before: int = 0  # of the quantised parts' Linear weights and biases
    weight_bytes_after: int = 0
    group_sizes: list[int] = field(default_factory=list)  # int4 only


class _ImportNoise(logging.Filter):
    """Drops two messages that importing torchao logs on every machine without its optional GPU extensions (and
    transformers imports torchao whenever it is installed, quantised or not): the extensions that cannot load, and
    torch's notice about how torchao registers its enums. Every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (("Failed to load" in message and "torchao" in message)
                    or "is an Enum subclass and is now natively supported" in message)


for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).addFilter(_ImportNoise())


@contextmanager
def _quiet() -> Iterator[None]:
    """torch.ao warns on every call that it is deprecated (docs/backends.md says why we still use it on CPU)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.ao.quantization")
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantized tensor creation functions")
        yield


def _torchao(config_for: Callable[[nn.Linear], object | None]) -> Callable[[nn.Module, list[str]], None]:
    """A torchao ``quantize_`` over the named Linear layers; ``config_for(layer)`` picks its config (None: skip)."""
    def apply(model: nn.Module, names: list[str]) -> None:
        from torchao.quantization import quantize_

        by_config: dict[str, tuple[object, set[str]]] = {}  # configs are unhashable: grouped by their repr
        modules = dict(model.named_modules())
        for name in names:
            config = config_for(modules[name])
            if config is not None:
                by_config.setdefault(repr(config), (config, set()))[1].add(name)
        for config, chosen in by_config.values():
            quantize_(model, config, filter_fn=lambda m, fqn, chosen=chosen: fqn in chosen)
    return apply


def _int4_group(layer: nn.Linear, out_multiple: int) -> int | None:
    """The group size for a layer, or None when the int4 packing cannot hold it (its kernels need the output width
    to be a multiple of 16 on CPU, 8 on CUDA): that layer stays in full precision and is reported as skipped."""
    if layer.out_features % out_multiple:
        return None
    return next((g for g in INT4_GROUP_SIZES if layer.in_features % g == 0), None)


def _cpu_int4_config(layer: nn.Linear) -> object | None:
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    group = _int4_group(layer, 16)
    return None if group is None else PrototypeInt4WeightOnlyConfig(group_size=group)


def _cuda_int4_config(layer: nn.Linear) -> object | None:
    from torchao.quantization import Int4WeightOnlyConfig

    group = _int4_group(layer, 8)
    return None if group is None else Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d")


def _int8_weight_config(layer: nn.Linear) -> object:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def _quanto_int8(model: nn.Module, names: list[str]) -> None:
    """optimum-quanto qint8 weights: on CPU with bf16 activations its matmul is aten._weight_int8pack_mm."""
    from optimum.quanto import freeze, qint8, quantize

    quantize(model, weights=qint8, include=names)
    freeze(model)


def _own(layer_type: type[OwnLinear]) -> Callable[[nn.Module, list[str]], None]:
    """Replaces the named Linear layers by ``layer_type`` (ours, run by our kernels: ``llava_accel.gemv``), those whose shape it supports; the
    layers of one parent module and input width share their buffers (``own_linear.store_together``), so that those
    reading one input (q/k/v, gate/up) run as one call in the lean decoder."""
    def apply(model: nn.Module, names: list[str]) -> None:
        siblings: dict[tuple[str, int], list[OwnLinear]] = {}
        for name in names:
            layer = model.get_submodule(name)
            if layer_type.supports(layer):
                parent, _, child = name.rpartition(".")
                own = layer_type.from_linear(layer)
                setattr(model.get_submodule(parent) if parent else model, child, own)
                siblings.setdefault((parent, own.in_features), []).append(own)
        for layers in siblings.values():
            store_together(layers)
    return apply


def _torch_dynamic(model: nn.Module, names: list[str]) -> None:
    """torch's own dynamic quantisation (fbgemm/x86 ``quantized::linear_dynamic``), per-channel int8 weights."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, inplace=True)


FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16
INT4_TORCHAO = 0.5 + 4 / 128  # half a byte plus a bf16 scale and zero point per group of 128
# Chosen by measurement on CPU (docs/backends.md): the int8 weight-only CPU kernel is fast for bf16 activations only
# (its fp32 path is 9-28x slower than not quantising); for int8-dynamic and int4 our own kernels (llava_accel.int8,
# llava_accel.int4) where they build, else torch's dynamic int8 (fp32 only) and torchao's int4 (bf16 only). Per
# (mode, device), in order of preference.
RECIPES: dict[tuple[str, str], tuple[Recipe, ...]] = {}
for _recipe in [
    Recipe("int8", "cpu", "optimum-quanto", "optimum.quanto", "quantize(weights=qint8): per-channel int8 weights, "
           "aten._weight_int8pack_mm", (BF16,), _quanto_int8, 1.0),
    Recipe("int8-dynamic", "cpu", "llava-accel", None, "per-channel int8 weights, activations rounded per row and "
           "call to 7 bits (as fbgemm's), own AVX2 kernel (llava_accel.int8)", (FP32, BF16), _own(Int8Linear),
           1.0 + 8 / 4096, lambda: gemv.unavailable_reason()),
    Recipe("int8-dynamic", "cpu", "torch", "torch", "torch.ao.quantization.quantize_dynamic: per-channel int8 weights, "
           "activations quantised per call, fbgemm/x86 int8 GEMM", (FP32,), _torch_dynamic, 1.0),
    Recipe("int4", "cpu", "llava-accel", None, "Q4_0 layout (groups of 32, fp16 scales), own AVX2 kernel "
           "(llava_accel.int4)", (BF16, FP32), _own(Int4Linear), 0.5 + 2 / 32, lambda: gemv.unavailable_reason()),
    Recipe("int4", "cpu", "torchao", "torchao", "PrototypeInt4WeightOnlyConfig: group-wise int4 weights, "
           "aten._weight_int4pack_mm_for_cpu", (BF16,), _torchao(_cpu_int4_config), INT4_TORCHAO),
    Recipe("int8", "cuda", "torchao", "torchao", "Int8WeightOnlyConfig: per-channel int8 weights (fused into the "
           "matmul under torch.compile)", (BF16, FP16), _torchao(_int8_weight_config), 1.0),
    Recipe("int4", "cuda", "torchao", "torchao", "Int4WeightOnlyConfig tile_packed_to_4d: group-wise int4 weights, "
           "tinygemm", (BF16,), _torchao(_cuda_int4_config), INT4_TORCHAO),
]:
    RECIPES[(_recipe.mode, _recipe.device)] = RECIPES.get((_recipe.mode, _recipe.device), ()) + (_recipe,)


def recipe_for(mode: str, device_type: str) -> Recipe | None:
    """The preferred recipe for (mode, device type) that can run here, else the last one (its failure is reported
    when it is used); None where no library serves the pair."""
    recipes = RECIPES.get((mode, device_type), ())
    return next((r for r in recipes if r.steps_aside() is None), recipes[-1] if recipes else None)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def unsupported_reason(mode: str | None, device: torch.device | str, dtype: torch.dtype,
                       include_vision: bool = False) -> str | None:
    """None when ``mode`` can run on ``device`` in ``dtype`` here, else one line saying what to change."""
    if mode is None:
        return "quantize_vision=True needs a quantize mode (int8, int8-dynamic, int4)" if include_vision else None
    if mode not in MODES:
        return f"unknown quantize mode {mode!r}; use None, {', '.join(repr(m) for m in MODES)}"
    device = torch.device(device)
    recipe = recipe_for(mode, device.type)
    if recipe is None:
        served = sorted(d for m, d in RECIPES if m == mode)
        return (f"quantize={mode!r} has no kernel on {device.type} (available on: {', '.join(served)}); "
                f"use {' or '.join(repr(m) for m, d in RECIPES if d == device.type and m != mode) or 'None'}")
    if dtype not in recipe.dtypes:
        return (f"quantize={mode!r} on {device.type} has kernels for {', '.join(map(_dtype_name, recipe.dtypes))} "
                f"only, not {_dtype_name(dtype)}; pass dtype={_dtype_name(recipe.dtypes[0])!r}")
    if recipe.module is not None and not _importable(recipe.module):
        return f"quantize={mode!r} on {device.type} needs the '{recipe.package}' package ({INSTALL_HINT})"
    if mode == "int4" and device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            return f"quantize='int4' on CUDA needs compute capability >= 8.0 (tinygemm), this GPU has {major}.{minor}"
    return None


def check_supported(mode: str | None, device: torch.device | str, dtype: torch.dtype,
                    include_vision: bool = False) -> None:
    """Raise the one-line ``BackendUnavailableError`` for an unsupported combination (before loading anything)."""
    reason = unsupported_reason(mode, device, dtype, include_vision)
    if reason is not None:
        raise BackendUnavailableError(reason)


def preferred_dtype(mode: str | None, device: torch.device | str, default: torch.dtype) -> torch.dtype:
    """``default``, unless ``mode`` has no kernel for it on ``device`` and one for another dtype (e.g. CPU
    int8-dynamic is fp32 only, CUDA int4 bf16 only): then that one, so a user who gave no dtype gets a working one."""
    recipe = recipe_for(mode, torch.device(device).type) if mode else None
    return default if recipe is None or default in recipe.dtypes else recipe.dtypes[0]


def linear_names(model: nn.Module, include_vision: bool = False) -> list[str]:
    """Fully qualified names of the Linear layers quantisation applies to (language model and LM head, and with
    ``include_vision`` the vision tower and projector). Embeddings stay: a decode step reads one row of them."""
    prefixes = LANGUAGE_PARTS + (VISION_PARTS if include_vision else ())
    return [name for name, m in model.named_modules() if _is_linear(m)
            and any(name == p or name.startswith(p + ".") for p in prefixes)]


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear and its quantised replacements (torch.ao's dynamic Linear is no nn.Linear; its packed weight is a
    child module without ``in_features``; ours hold int8 or int4 buffers)."""
    return isinstance(module, (nn.Linear, OwnLinear)) or (hasattr(module, "_packed_params") and hasattr(module, "in_features"))


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds, looking inside quantised tensors (torchao subclasses, torch quantized tensors)."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor and type(t) is not nn.Parameter:
        inner, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in inner)
    if t.is_quantized:
        extra = 0
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            extra = tensor_bytes(t.q_per_channel_scales()) + tensor_bytes(t.q_per_channel_zero_points())
        return t.numel() * t.element_size() + extra
    return t.numel() * t.element_size()


def linear_bytes(module: nn.Module) -> int:
    """Bytes of one Linear layer's weight and bias, quantised or not (torch.ao dynamic layers pack theirs)."""
    if hasattr(module, "_packed_params"):
        weight, bias = module._packed_params._weight_bias()
        return tensor_bytes(weight) + (0 if bias is None else tensor_bytes(bias))
    tensors = module.tensors() if isinstance(module, OwnLinear) else (module.weight, module.bias)
    return sum(tensor_bytes(t) for t in tensors if t is not None)


def decode_weight_bytes(model: nn.Module) -> int:
    """Weight bytes one decode step reads, quantised or not: every Linear of the language model and the LM head, and
    the norms; the embedding table is left out (a step reads one row of it). Divided by the memory bandwidth, this is
    the step's floor."""
    names = linear_names(model)
    modules = dict(model.named_modules())
    linear_params = {id(p) for n in names for p in modules[n].parameters(recurse=False)}
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    rest = [p for prefix in LANGUAGE_PARTS for p in modules[prefix].parameters()
            if id(p) not in linear_params and id(p) not in embeddings]
    return sum(linear_bytes(modules[n]) for n in names) + sum(tensor_bytes(p) for p in rest)


def quantize_model(model: nn.Module, mode: str, device: torch.device | str, dtype: torch.dtype,
                   include_vision: bool = False) -> QuantizeReport:
    """Quantise ``model`` in place (a LLaVA ``...ForConditionalGeneration`` on ``device`` in ``dtype``)."""
    check_supported(mode, device, dtype, include_vision)
    recipe = recipe_for(mode, torch.device(device).type)
    assert recipe is not None  # check_supported refused the pair otherwise
    names = linear_names(model, include_vision)
    modules = dict(model.named_modules())
    before = sum(full_precision_bytes(modules[n], dtype) for n in names)
    todo = [n for n in names if not is_quantized(modules[n])]  # with no_weights, made quantised block by block
    if todo:
        with _quiet():
            recipe.apply(model, todo)
    modules = dict(model.named_modules())
    done, skipped = [n for n in names if is_quantized(modules[n])], [n for n in names if not is_quantized(modules[n])]
    groups = sorted({g for n in done if (g := _group_size(modules[n]))}) if mode == "int4" \
        else []
    return QuantizeReport(mode=mode, library=f"{recipe.package} {_version(recipe.package)}", method=recipe.method,
                          parts=list(LANGUAGE_PARTS + (VISION_PARTS if include_vision else ())),
                          quantized_linears=len(done), skipped_linears=skipped, weight_bytes_before=before,
                          weight_bytes_after=sum(linear_bytes(modules[n]) for n in names), group_sizes=groups)


def full_precision_bytes(module: nn.Module, dtype: torch.dtype) -> int:
    """Bytes of a Linear layer's weight and bias in ``dtype``, whether or not it has been quantised since."""
    bias = module.bias() if callable(module.bias) else module.bias  # torch.ao's dynamic Linear: a method
    return (module.in_features * module.out_features + (module.out_features if bias is not None else 0)) \
        * dtype.itemsize


@dataclass
class BlockQuantizer:
    """Quantises the Linear layers of each block as soon as ``no_weights`` has made it (``models.no_weights``), so
    that a model is never whole in full precision: the 7B in fp32 for int8-dynamic would need 28 GB."""

    mode: str
    device: torch.device
    include_vision: bool = False

    def selects(self, name: str) -> bool:
        prefixes = LANGUAGE_PARTS + (VISION_PARTS if self.include_vision else ())
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    def bytes_per_weight(self, name: str, module: nn.Module) -> float | None:
        """What ``no_weights``' memory check counts per weight of ``module`` (None: it stays in full precision)."""
        recipe = recipe_for(self.mode, self.device.type)
        return recipe.weight_bytes if recipe and self.selects(name) and _is_linear(module) else None

    def __call__(self, model: nn.Module, names: list[str]) -> None:
        chosen = [n for n in names if self.selects(n) and _is_linear(model.get_submodule(n))]  # no references kept
        if chosen:
            with _quiet():
                recipe_for(self.mode, self.device.type).apply(model, chosen)
            # the float layers swapped out sit in reference cycles (torch.ao's qconfig closes over its module), which
            # only the cycle collector frees: without this, the 7B for int8-dynamic grew by its fp32 layers (1 GB each)
            gc.collect()
            release_heap()


M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 4 * 2**20  # glibc's mallopt parameter, and the size we set it to


def release_heap() -> None:
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim``; nothing elsewhere): quantising
    frees many mid-sized buffers that glibc would otherwise keep, and the peak RSS of a 7B made block by block grew
    by them."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def mmap_large_buffers(threshold: int = MMAP_THRESHOLD) -> None:
    """Give every C buffer of ``threshold`` bytes or more a mapping of its own, unmapped when freed (glibc's
    ``M_MMAP_THRESHOLD``; nothing elsewhere). Left to itself, glibc raises that threshold to the size of each mapped
    buffer freed (up to 32 MiB), after which a prefill's per-layer tensors (the 7B's prompt keys and values, 12.8 MB
    each in fp32) come from the heap and fragment it: the 7B's int4 fp32 prefill peaked at 7.20 GiB so, 6.79 with a
    fixed 4 MiB threshold. Process-wide, set when a CPU backend loads."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def _group_size(module: nn.Module) -> int:
    """An int4 layer's group size (ours, or a torchao tensor's block size); 0 for others."""
    return module.group_size if isinstance(module, Int4Linear) else getattr(module.weight, "block_size", [0])[-1]


def is_quantized(module: nn.Module) -> bool:
    """True when a Linear-like layer holds quantised weights (ours, a torchao tensor subclass or torch.ao packed
    int8)."""
    if isinstance(module, OwnLinear) or hasattr(module, "_packed_params"):
        return True
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and type(weight) not in (torch.Tensor, nn.Parameter)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package (``optimum``) is missing
        return False


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"
