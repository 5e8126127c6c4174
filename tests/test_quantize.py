"""Quantisation on the tiny model: each mode loads, generates, holds quantised weights (checked by type and by
bytes, so a silent no-op cannot pass), stays close to the unquantised logits without equalling them, and an
unsupported combination fails at load time with one line, before any model is loaded."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import llava_accel as la
from llava_accel import quantize as q
from llava_accel.backends.cpu import CpuBackend
from llava_accel.int4 import Int4Linear
from llava_accel.int8 import Int8Linear
from llava_accel.metrics.drift import drift

MAX_NEW = 8
MODES = ["int8", "int8-dynamic", "int4"]
OWN_INT4 = q.recipe_for("int4", "cpu").package == "llava-accel"  # else torchao's, where ours cannot build
OWN_INT8 = q.recipe_for("int8-dynamic", "cpu").package == "llava-accel"  # else torch.ao's (fbgemm)


def _weight_is_quantized_as(mode: str, module: nn.Module) -> bool:
    """Independent of ``q.is_quantized``: the exact module or tensor type each library produces."""
    if mode == "int8":
        from optimum.quanto import QLinear
        from optimum.quanto.tensor.weights.qbytes import WeightQBytesTensor

        w = module.weight
        return isinstance(module, QLinear) and isinstance(w, WeightQBytesTensor) and w._data.dtype == torch.int8
    if mode == "int8-dynamic" and OWN_INT8:
        return (isinstance(module, Int8Linear) and module.weight.dtype == torch.int8
                and module.weight.shape == (module.out_features, module.in_features)
                and module.scales.shape == module.sums.shape == (module.out_features,))
    if mode == "int8-dynamic":
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        return isinstance(module, DynamicLinear) and module.weight().dtype == torch.qint8
    if OWN_INT4:
        return (isinstance(module, Int4Linear) and module.packed.numel() * 2 == module.in_features * module.out_features
                and module.scales.dtype == torch.int16 and module.scales.numel() * 32 == module.packed.numel() * 2)
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor

    w = module.weight  # two int4 values per byte
    return isinstance(w, Int4OpaqueTensor) and w.qdata.numel() * 2 == module.in_features * module.out_features


def _linears(model: nn.Module, prefix: str) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n.startswith(prefix) and hasattr(m, "in_features")}


@pytest.fixture(scope="module", params=MODES)
def quantized(request):
    """The dtype is left to the backend: each mode picks one it has a fast CPU kernel for."""
    return la.load_backend("cpu", quantize=request.param)


@pytest.fixture(scope="module")
def reference(quantized):
    """The same backend unquantised, in the same dtype."""
    return la.load_backend("cpu", dtype=quantized.dtype)


def test_mode_picks_a_dtype_with_a_kernel(quantized):
    default = getattr(torch, CpuBackend.default_dtype)  # ours run both bf16 and fp32
    int4, int8_dynamic = default if OWN_INT4 else torch.bfloat16, default if OWN_INT8 else torch.float32
    expected = {"int8": torch.bfloat16, "int8-dynamic": int8_dynamic, "int4": int4}[quantized.quantize]
    assert quantized.dtype == expected and quantized.model.dtype == expected


def test_language_model_holds_quantized_weights_and_vision_does_not(quantized):
    mode, model = quantized.quantize, quantized.model
    language = _linears(model, "model.language_model")
    assert len(language) == 7 * model.config.text_config.num_hidden_layers  # q k v o gate up down
    assert all(_weight_is_quantized_as(mode, m) for m in language.values())
    skips_head = mode == "int4" and not OWN_INT4  # torchao's int4 CPU packing: 481 % 16 != 0
    assert _weight_is_quantized_as(mode, model.lm_head) == (not skips_head)
    for m in _linears(model, "model.vision_tower").values():
        assert type(m) is nn.Linear and type(m.weight) is nn.Parameter
    report = quantized.describe()["quantization"]
    assert quantized.describe()["quantize"] == mode and report["mode"] == mode
    assert report["quantized_linears"] == len(language) + (not skips_head)
    assert report["skipped_linears"] == (["lm_head"] if skips_head else [])
    # 1 byte (int8) or half a byte (int4) per weight, plus at most 16 bytes of scales per row (torch.ao: float64
    # scale and int64 zero point per output channel; our int8: an fp32 scale and an int32 sum; our int4: an fp16
    # scale per 32 weights); a skipped LM head counts
    # in full
    full = model.dtype.itemsize
    lm_head_bytes = model.lm_head.weight.numel() * full if skips_head else 0
    ratio = (report["weight_bytes_after"] - lm_head_bytes) / (report["weight_bytes_before"] - lm_head_bytes)
    low = (0.5 if mode == "int4" else 1) / full
    narrowest = min(m.in_features for m in language.values())
    assert low <= ratio <= low + 16 / (narrowest * full), ratio


def test_logits_move_but_stay_close(quantized, reference, mixed_batch):
    images, prompts = mixed_batch
    inputs = reference.prepare(images, prompts)
    with torch.inference_mode():
        expected = reference.model(**inputs).logits[:, -1]
        got = quantized.model(**inputs).logits[:, -1]
    rel = ((got - expected).norm() / expected.norm()).item()
    assert 0 < rel < (0.05 if quantized.quantize != "int4" else 0.25), rel  # int4 of random weights: coarse


def test_generates_and_reports_drift(quantized, reference, mixed_batch):
    images, prompts = mixed_batch
    ref = reference.generate(images, prompts, max_new_tokens=MAX_NEW)
    out = quantized.generate(images, prompts, max_new_tokens=MAX_NEW)
    assert len(out) == len(prompts) and all(o.token_ids for o in out)
    d = drift([o.token_ids for o in ref], [o.token_ids for o in out])
    assert d.samples == len(prompts) and 0 <= d.identical <= 1
    assert 0 <= d.mean_common_prefix <= d.mean_reference_length
    same = drift([o.token_ids for o in out], [o.token_ids for o in quantized.generate(images, prompts, MAX_NEW)])
    assert (same.identical, same.mean_common_prefix) == (1.0, same.mean_reference_length)


def test_eager_backend_inherits_the_option():
    b = la.load_backend("eager", device="cpu", quantize="int8")  # eager defaults to fp16: int8 picks bf16
    assert b.dtype == torch.bfloat16
    assert _weight_is_quantized_as("int8", b.model.model.language_model.layers[0].mlp.up_proj)


def test_quantize_vision_covers_vision_tower_and_projector():
    b = la.load_backend("cpu", quantize="int8", quantize_vision=True)
    vision = {**_linears(b.model, "model.vision_tower"), **_linears(b.model, "model.multi_modal_projector")}
    assert vision and all(_weight_is_quantized_as("int8", m) for m in vision.values())
    assert "model.vision_tower" in b.describe()["quantization"]["parts"]


@pytest.mark.parametrize("options, message", [
    ({"quantize": "int3"}, r"^unknown quantize mode 'int3'; use None, 'int8', 'int8-dynamic', 'int4'$"),
    ({"quantize": "int8-dynamic", "dtype": "float16"},
     r"^quantize='int8-dynamic' on cpu has kernels for float32(, bfloat16)? only, not float16; pass dtype='float32'$"),
    ({"quantize": "int4", "dtype": "float16"},
     r"^quantize='int4' on cpu has kernels for bfloat16(, float32)? only, not float16; pass dtype='bfloat16'$"),
    ({"quantize_vision": True}, r"^quantize_vision=True needs a quantize mode"),
])
def test_unsupported_combination_fails_before_loading(options, message, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the combination was checked")

    monkeypatch.setattr("llava_accel.backends.base.load_model", no_load)
    with pytest.raises(la.BackendUnavailableError, match=message) as err:
        la.load_backend("cpu", **options)
    assert "\n" not in str(err.value)


def test_no_kernel_on_device_and_missing_library_are_one_line(monkeypatch):
    assert q.unsupported_reason("int8-dynamic", "cuda", torch.float16) == \
        "quantize='int8-dynamic' has no kernel on cuda (available on: cpu); use 'int8' or 'int4'"
    assert "bfloat16 only, not float16" in q.unsupported_reason("int4", "cuda", torch.float16)
    monkeypatch.setattr(q.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(q.gemv, "unavailable_reason", lambda: "no C compiler (cc) on PATH")  # then torchao serves
    assert q.unsupported_reason("int4", "cpu", torch.bfloat16) == \
        "quantize='int4' on cpu needs the 'torchao' package (pip install -e '.[quantize]' in a llava_accel checkout)"

    def no_optimum(name):
        raise ModuleNotFoundError("No module named 'optimum'")

    monkeypatch.setattr(q.importlib.util, "find_spec", no_optimum)
    assert "needs the 'optimum-quanto' package" in q.unsupported_reason("int8", "cpu", torch.bfloat16)


def test_preferred_dtype_picks_one_with_a_kernel():
    assert q.preferred_dtype("int8-dynamic", "cpu", torch.float16) == torch.float32
    assert q.preferred_dtype("int4", "cuda", torch.float16) == torch.bfloat16
    assert q.preferred_dtype("int8", "cpu", torch.float32) == torch.bfloat16
    assert q.preferred_dtype("int8", "cuda", torch.float16) == torch.float16
    assert q.preferred_dtype(None, "cpu", torch.bfloat16) == torch.bfloat16


def test_tensor_bytes_counts_what_is_stored():
    assert q.tensor_bytes(torch.zeros(10, 20)) == 800
    qt = torch.quantize_per_channel(torch.randn(10, 20), torch.ones(10, dtype=torch.float64),
                                    torch.zeros(10, dtype=torch.long), 0, torch.qint8)
    assert q.tensor_bytes(qt) == 200 + 10 * 8 + 10 * 8  # int8 values + float64 scales + int64 zero points
    layer = nn.Linear(256, 64)
    assert q.linear_bytes(layer) == (256 * 64 + 64) * 4


def test_compile_backend_inherits_the_option():
    """Construction only: the first generate compiles (minutes on 2 cores); compiled quantised decoding was checked
    by hand to give the same tokens as eager quantised (docs/backends.md)."""
    b = la.load_backend("compile", device="cpu", quantize="int4")  # its default fp16 has no kernel: bf16 picked
    assert b.describe()["quantize"] == "int4" and b.dtype == torch.bfloat16
    assert _weight_is_quantized_as("int4", b.model.model.language_model.layers[0].self_attn.q_proj)


@pytest.mark.parametrize("mode, kernel, serves, dtypes", [
    ("int4", None, "llava-accel", (torch.bfloat16, torch.float32)),
    ("int4", "this CPU lacks avx2", "torchao", (torch.bfloat16,)),
    ("int8-dynamic", None, "llava-accel", (torch.float32, torch.bfloat16)),
    ("int8-dynamic", "this CPU lacks avx2", "torch", (torch.float32,)),
])
def test_own_recipes_serve_where_our_kernels_build(monkeypatch, mode, kernel, serves, dtypes):
    monkeypatch.setattr(q.gemv, "unavailable_reason", lambda: kernel)
    recipe = q.recipe_for(mode, "cpu")
    assert recipe.package == serves and recipe.dtypes == dtypes
    for asked in (torch.float32, torch.bfloat16):  # a dtype without a kernel: the recipe's first
        assert q.preferred_dtype(mode, "cpu", asked) == (asked if asked in dtypes else dtypes[0])




MAPPED = """
import ctypes, sys, torch
from llava_accel import quantize as q
class MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    sys.exit(3)
libc.mallinfo2.restype = MallInfo2
q.mmap_large_buffers(int(sys.argv[1]))
before = libc.mallinfo2().hblks
x = torch.empty(6 * 2**20, dtype=torch.uint8)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.parametrize("threshold, mapped", [(64 * 2**20, 0), (q.MMAP_THRESHOLD, 1)])
def test_large_buffers_get_mappings_of_their_own(threshold, mapped):
    """mmap_large_buffers moves glibc's threshold: on a fresh heap, a 6 MiB tensor is mapped (and so unmapped when
    freed) below it, taken from the heap above it. A process of its own: a heap with free room serves it anyway."""
    done = subprocess.run([sys.executable, "-c", MAPPED, str(threshold)], capture_output=True, text=True, timeout=120)
    if done.returncode == 3:
        pytest.skip("this C library has no mallinfo2 (glibc >= 2.33) to count mapped buffers")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == mapped
