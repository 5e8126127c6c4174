"""Our own kernels (``llava_accel.gemv``, ``llava_accel.int8``, ``llava_accel.int4``): against torch's arithmetic on
the same numbers, against llama.cpp's Q4_0 and Q8_0 (its ``gguf`` package) bit for bit and fbgemm's dynamic int8 to
within rounding, a row's result independent of what it is batched with and of the thread count, and the fallbacks
when the kernels cannot build."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llava_accel import gemv
from llava_accel.int4 import Int4Linear, quantize_q4_0
from llava_accel.int8 import Int8Linear, quantize_int8
from llava_accel.lean.layer import module_projection
from llava_accel.upcast import UPCAST_MIN_ROWS, cpu_gemms, own_kernel_max_rows

pytestmark = pytest.mark.skipif(gemv.unavailable_reason() is not None,
                                reason=f"own kernels unavailable here: {gemv.unavailable_reason()}")
N, K = 96, 320  # K: ten int4 groups; N not a multiple of the thread count


@pytest.fixture
def weight():
    return torch.randn(N, K, generator=torch.Generator().manual_seed(0)) * 0.05


def _rows_independent(f, x: torch.Tensor) -> bool:
    """Each row computed alone, and with 1 or 2 threads, gives the bits it gives in the batch."""
    batch = f(x)
    before = torch.get_num_threads()
    try:
        same = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            same += [torch.equal(f(x[i:i + 1])[0], batch[i]) for i in range(x.shape[0])]
            same.append(torch.equal(f(x), batch))
    finally:
        torch.set_num_threads(before)
    return all(same)


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("x_dtype", [torch.bfloat16, torch.float32])  # bf16: in hardware where the CPU has it
def test_bf16_kernel_is_the_fp32_product_of_the_bf16_numbers(weight, rows, x_dtype):
    w = weight.to(torch.bfloat16)
    x = torch.randn(rows, K).to(torch.bfloat16).to(x_dtype)
    got = gemv.bf16_linear(x, w)
    exact = F.linear(x.double(), w.double())
    assert got.dtype == torch.float32 and got.shape == (rows, N)
    assert torch.allclose(got.double(), exact, rtol=0, atol=1e-5), (got.double() - exact).abs().max()
    assert _rows_independent(lambda t: gemv.bf16_linear(t, w), x)


def test_hardware_bf16_products_are_chosen_from_the_cpu(monkeypatch):
    from llava_accel.cpuinfo import cpu_flags

    has = all(f in cpu_flags() for f in gemv.NATIVE_NEEDS)
    assert gemv.native_bf16() == has and ("AVX-512 BF16" in gemv.describe()) == has
    monkeypatch.setenv(gemv.ENV, "avx2")  # the AVX2 kernels alone, on any CPU
    gemv._library.cache_clear()
    try:
        assert not gemv.native_bf16() and gemv.describe().startswith("our AVX2 kernels")
    finally:
        monkeypatch.delenv(gemv.ENV)
        gemv._library.cache_clear()


def test_q4_0_packing_is_llama_cpps(weight):
    gguf = pytest.importorskip("gguf", reason="llama.cpp's gguf package (pip install -e '.[llamacpp]')")
    from gguf import quants

    weight[0, :32] = 0  # an all-zero group: scale 0, every nibble 8
    packed, scales = quantize_q4_0(weight)
    blocks = quants.quantize(weight.numpy(), gguf.GGMLQuantizationType.Q4_0).reshape(N, K // 32, 18)
    assert torch.equal(packed.view(N, K // 32, 16), torch.from_numpy(blocks[..., 2:].copy()))
    assert torch.equal(scales.view(torch.uint8).view(N, K // 32, 2), torch.from_numpy(blocks[..., :2].copy()))
    layer = Int4Linear(packed, scales, None)
    reference = quants.dequantize(blocks.reshape(N, -1), gguf.GGMLQuantizationType.Q4_0)
    assert torch.equal(layer.dequantize(), torch.from_numpy(reference))


def test_q4_blocked_layout_moves_each_q4_0_word_and_scale_to_its_place(weight):
    packed, scales = quantize_q4_0(weight)
    blocked, blocked_scales = gemv.q4_blocks(packed), gemv.q4_blocks(scales)
    assert blocked.shape == packed.shape and blocked_scales.shape == scales.shape
    block = gemv.Q4_BLOCK
    for j, t in [(0, 0), (5, 7), (17, 33), (N - 1, K // 2 - 1)]:  # row j's byte t: word t // 4 of the block's row j % 16
        at = (j - j % block) * K // 2 + (t // 4 * block + j % block) * 4 + t % 4
        assert blocked.flatten()[at] == packed[j, t]
    for j, g in [(3, 0), (20, 9)]:
        assert blocked_scales.flatten()[(j - j % block) * K // 32 + g * block + j % block] == scales[j, g]
    assert torch.equal(gemv.q4_dequantize(blocked, blocked_scales, blocked=True), gemv.q4_dequantize(packed, scales))


def _layouts():
    return [False, pytest.param(True, marks=pytest.mark.skipif(
        not gemv.q4_blocked_kernel(), reason="the blocked int4 loop needs AVX-512 VNNI"))]


@pytest.mark.parametrize("blocked", _layouts())
@pytest.mark.parametrize("rows", [1, 3, 7])  # the blocked loop's tiles of 4, 2 and 1 rows
def test_q4_kernel_is_the_product_of_q8_0_inputs_and_q4_0_weights(weight, rows, blocked):
    gguf = pytest.importorskip("gguf", reason="llama.cpp's gguf package (pip install -e '.[llamacpp]')")
    from gguf import quants

    packed, scales = quantize_q4_0(weight)
    if blocked:
        packed, scales = gemv.q4_blocks(packed), gemv.q4_blocks(scales)
    layer = Int4Linear(packed, scales, None, blocked=blocked)
    x = torch.randn(rows, K)
    blocks = quants.quantize(x.numpy(), gguf.GGMLQuantizationType.Q8_0).reshape(rows, K // 32, 34)
    ints = torch.from_numpy(blocks[..., 2:].copy()).view(torch.int8).double()  # Q8_0's int8 values; its scale is
    scale = x.view(rows, K // 32, 32).abs().amax(-1, keepdim=True) / 127  # stored in fp16, ours kept in fp32
    exact = F.linear((ints * scale.double()).view(rows, K), layer.dequantize().double())
    got = layer(x)
    assert torch.allclose(got.double(), exact, rtol=0, atol=1e-5), (got.double() - exact).abs().max()
    assert _rows_independent(layer, x)


@pytest.mark.parametrize("blocked", _layouts())
@pytest.mark.parametrize("rows", [1, 5])
def test_q4_kernel_reads_and_writes_bf16_as_torch_converts_it(weight, rows, blocked):
    packed, scales = quantize_q4_0(weight)
    if blocked:
        packed, scales = gemv.q4_blocks(packed), gemv.q4_blocks(scales)
    for magnitude in (1.0, 1e-38):  # the second: denormal inputs and outputs, which torch keeps (no flush to zero)
        x = (torch.randn(rows, K) * magnitude).bfloat16()
        y32 = gemv.q4_linear(x.float(), packed, scales, blocked)
        assert torch.equal(gemv.q4_linear(x, packed, scales, blocked), y32)  # bf16 x read as torch widens it
        got = gemv.q4_linear(x, packed, scales, blocked, bf16_out=True)
        assert got.dtype == torch.bfloat16 and torch.equal(got, y32.bfloat16())
        assert magnitude == 1.0 or (y32.abs() < torch.finfo(torch.float32).tiny).any()


@pytest.mark.parametrize("n", [96, 40])
def test_int4_layer_is_blocked_where_the_kernel_reads_it_and_the_rows_fill_blocks(n):
    linear = nn.Linear(K, n)
    layer, q4_0 = Int4Linear.from_linear(linear), Int4Linear(*quantize_q4_0(linear.weight), linear.bias)
    assert layer.blocked == (gemv.q4_blocked_kernel() and n % gemv.Q4_BLOCK == 0)
    assert ("blocked" in repr(layer)) == layer.blocked
    assert torch.equal(layer.dequantize(), q4_0.dequantize())
    x = torch.randn(UPCAST_MIN_ROWS + 1, K)  # many rows: the same GEMM on the same weight; few: another sum order
    assert torch.equal(layer(x), q4_0(x))
    assert torch.allclose(layer(x[:2]), q4_0(x[:2]), rtol=0, atol=1e-5)


def _u7(x: torch.Tensor) -> torch.Tensor:
    """Each row of x as its 7-bit integers, less the zero point, times the scale: the numbers the int8 kernel
    multiplies (written here from the scheme, not from the kernel)."""
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / 127
    zero = torch.round(-lo / scale)
    return ((torch.round(x / scale) + zero).clamp(0, 127) - zero).double() * scale.double()


@pytest.mark.parametrize("rows", [1, 3, 7, 70])  # every tile shape, and a prefill's many rows
def test_int8_kernel_is_the_product_of_7_bit_rows_and_int8_weights(weight, rows):
    q, scales, sums = quantize_int8(weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127 and torch.equal(sums, q.sum(1, dtype=torch.int32))
    x = torch.randn(rows, K)
    x[0] = x[0].abs()  # a row without negatives: zero point 0
    exact = F.linear(_u7(x), q.double() * scales.double()[:, None])
    got = gemv.i8_linear(x, q, scales, sums)
    assert got.dtype == torch.float32 and got.shape == (rows, N)
    assert torch.allclose(got.double(), exact, rtol=1e-6, atol=1e-6), (got.double() - exact).abs().max()
    assert _rows_independent(lambda t: gemv.i8_linear(t, q, scales, sums), x)


@pytest.mark.parametrize("k", [K, K + 32])  # a multiple of 64 (the VNNI loop where the CPU has it), and not
def test_int8_sums_are_the_same_bits_on_every_instruction_set(monkeypatch, k):
    q, scales, sums = quantize_int8(torch.randn(N, k))
    x = torch.randn(5, k)
    here = gemv.i8_linear(x, q, scales, sums)
    monkeypatch.setenv(gemv.ENV, "avx2")
    gemv._library.cache_clear()
    try:
        assert torch.equal(gemv.i8_linear(x, q, scales, sums), here)
    finally:
        monkeypatch.delenv(gemv.ENV)
        gemv._library.cache_clear()


def test_int8_many_rows_through_torchs_int8_gemm_are_the_same_bits(monkeypatch, weight):
    """From I8_GEMM_MIN_ROWS rows on a VNNI/AMX CPU, torch's int8 GEMM sums the products between our rounding and our
    scaling: exact integers, so nothing a user can see changes but the time (forced here on any CPU)."""
    q, scales, sums = quantize_int8(weight)
    x = torch.randn(gemv.I8_GEMM_MIN_ROWS + 3, K)
    monkeypatch.setattr(gemv, "onednn_int8", lambda: False)
    ours = gemv.i8_linear(x, q, scales, sums)
    monkeypatch.setattr(gemv, "onednn_int8", lambda: True)
    assert torch.equal(gemv.i8_linear(x, q, scales, sums), ours)
    assert torch.equal(gemv.i8_linear(x[:2], q, scales, sums), ours[:2])  # fewer rows: our kernel, the same bits


def test_int8_layer_matches_fbgemms_dynamic_quantisation(weight):
    """Same scheme as torch.ao's dynamic Linear (fbgemm, reduce_range), so the same answer to within the rounding
    of the scales (theirs: max|w| / 127.5 per row and one x scale for all rows; ours: / 127 and one per row)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    linear = nn.Linear(K, N)
    linear.weight.data = weight
    linear.qconfig = per_channel_dynamic_qconfig
    theirs, ours = DynamicLinear.from_float(linear), Int8Linear.from_linear(linear)
    x = torch.randn(2, 5, K).to(torch.bfloat16)
    exact = linear(x.float())
    got = ours(x)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 5, N)
    ours_error = ((ours(x.float()) - exact).norm() / exact.norm()).item()
    theirs_error = ((theirs(x.float()) - exact).norm() / exact.norm()).item()
    assert 0 < ours_error < 1.2 * theirs_error and theirs_error < 0.03, (ours_error, theirs_error)
    assert torch.allclose(ours.dequantize(), weight, atol=weight.abs().max().item() / 254 + 1e-7)


@pytest.mark.parametrize("native", [True, False])
def test_int4_layer_runs_many_rows_on_the_dequantised_weight(monkeypatch, weight, native):
    """In bf16 where the CPU multiplies bf16 itself (forced here either way), else in fp32."""
    from llava_accel import int4

    monkeypatch.setattr(int4, "cpu_has_native_bf16", lambda: native)
    linear = nn.Linear(K, N)
    linear.weight.data = weight
    layer = Int4Linear.from_linear(linear)
    x = torch.randn(2, UPCAST_MIN_ROWS, K).to(torch.bfloat16)
    dtype = torch.bfloat16 if native else torch.float32
    expected = F.linear(x.to(dtype), layer.dequantize().to(dtype), linear.bias.to(dtype)).to(torch.bfloat16)
    assert torch.equal(layer(x), expected)
    assert torch.equal(layer(x.float()), F.linear(x.float(), layer.dequantize(), linear.bias))  # fp32 x: fp32
    few = layer(x[:1, :3])  # the kernel, bias added
    assert few.dtype == torch.bfloat16 and torch.allclose(few.float(), expected[:1, :3].float(), atol=0.05)
    assert (layer.in_features, layer.out_features, layer.bias is not None) == (K, N, True)


@pytest.mark.parametrize("upcast", [True, False])
def test_bf16_layers_run_few_rows_on_our_kernel_in_the_lean_loop_too(upcast):
    wide = 1 << 10  # 1M weights: OWN_MIN_ELEMENTS
    model = nn.Sequential(nn.Linear(wide, wide, bias=False), nn.Linear(40, 16), nn.Linear(K, N)).to(torch.bfloat16)
    upcast_layers, own = cpu_gemms(model, upcast, own_max_rows=3)  # 40 wide, and K x N small: not ours
    assert (upcast_layers, own.layers, own.max_rows) == (3 * upcast, 1, 3)
    assert module_projection(model[2]) is not model[2].forward  # torch's kernel, as before: fusable
    x = torch.randn(1, 3, wide).to(torch.bfloat16)
    expected = gemv.bf16_linear(x, model[0].weight).to(torch.bfloat16)
    assert torch.equal(model[0](x), expected)
    assert torch.equal(module_projection(model[0])(x), expected)  # the lean layers call the same forward
    four = torch.randn(4, wide).to(torch.bfloat16)  # past own_max_rows: torch's bf16 kernel
    assert torch.equal(model[0](four), F.linear(four, model[0].weight))


def test_unavailable_kernels_say_why_and_leave_torchs(monkeypatch, weight):
    monkeypatch.setenv(gemv.ENV, "0")
    gemv._library.cache_clear()
    try:
        assert gemv.unavailable_reason() == f"{gemv.ENV}=0"
        assert gemv.describe() == f"torch's kernels ({gemv.ENV}=0)"
        assert own_kernel_max_rows(native_bf16=False) == 0
    finally:
        monkeypatch.delenv(gemv.ENV)
        gemv._library.cache_clear()
    assert gemv.unavailable_reason() is None


def test_prefetch_hint_follows_the_vendor_changes_no_bits_and_refuses_nonsense(monkeypatch, weight):
    from llava_accel import cpuinfo

    q, scales, sums = quantize_int8(weight)
    packed, q4_scales = quantize_q4_0(weight)
    x = torch.randn(3, K)
    results = []
    try:
        for vendor, default in [("AuthenticAMD", "nta"), ("GenuineIntel", "t0"), ("", "t0")]:
            monkeypatch.setattr(gemv, "cpu_vendor", lambda vendor=vendor: vendor)
            assert gemv.prefetch_hint() == default
        for hint in gemv.PREFETCH_HINTS:  # the hint moves data earlier or not, never changes a result
            monkeypatch.setenv(gemv.PREFETCH_ENV, hint)
            gemv._library.cache_clear()
            assert gemv.describe().endswith(f"prefetch {hint})")
            monkeypatch.setenv(gemv.PREFETCH_ENV, "off" if hint != "off" else "nta")  # after the build: no effect
            assert gemv.describe().endswith(f"prefetch {hint})")
            results.append((gemv.i8_linear(x, q, scales, sums), gemv.q4_linear(x, packed, q4_scales)))
        assert all(torch.equal(a, b) for other in results[1:] for a, b in zip(results[0], other))
        monkeypatch.setenv(gemv.PREFETCH_ENV, "always")
        with pytest.raises(gemv.OptionError, match="LLAVA_ACCEL_PREFETCH='always' is not one of nta, t0, off"):
            gemv.prefetch_hint()
    finally:
        monkeypatch.delenv(gemv.PREFETCH_ENV, raising=False)
        gemv._library.cache_clear()
    assert cpuinfo.cpu_vendor("vendor_id\t: AuthenticAMD\nflags\t: avx2\n") == "AuthenticAMD"


def test_own_kernel_rule_follows_the_cpu():
    # torch's native bf16 GEMM wins from 3-4 rows against our AVX2 kernel, not up to 16 against our AVX-512 BF16 one
    assert own_kernel_max_rows(native_bf16=True) == (16 if gemv.native_bf16() else 2)
    assert own_kernel_max_rows(native_bf16=False) == UPCAST_MIN_ROWS - 1  # torch's emulated bf16 loses at any rows


@pytest.mark.parametrize("mode, layer_type", [("int4", Int4Linear), ("int8-dynamic", Int8Linear)])
def test_cpu_backend_with_our_quantised_layers_generates_like_its_lean_and_generate_loops(monkeypatch, mode,
                                                                                         layer_type):
    """The whole path on the tiny model: our recipe, every Linear of the language model and the LM head ours,
    the lean loop's tokens those of transformers' ``generate`` (with the same attention kernel)."""
    import llava_accel as la
    from llava_accel import quantize as q
    from llava_accel.tasks import synthetic_samples

    monkeypatch.setattr(gemv, "attends", lambda q, k, v, mask: False)  # generate runs torch's SDPA
    ours = tuple(r for r in q.RECIPES[(mode, "cpu")] if r.package == "llava-accel")
    monkeypatch.setitem(q.RECIPES, (mode, "cpu"), ours)  # ours, also where the CPU would pick fbgemm (AVX-512 VNNI)
    samples = synthetic_samples("synthetic-coco", 2)
    images, prompts = [s.image for s in samples], [s.prompt for s in samples]
    lean = la.load_backend("cpu", quantize=mode, threads=2)
    report = lean.describe()["quantization"]
    assert report["library"].startswith("llava-accel") and report["skipped_linears"] == []
    assert report["group_sizes"] == ([32] if mode == "int4" else []) and isinstance(lean.model.lm_head, layer_type)
    names = q.linear_names(lean.model)
    assert names and all(isinstance(lean.model.get_submodule(n), layer_type) for n in names)
    slow = la.load_backend("cpu", quantize=mode, threads=2, loop="generate")
    expected = [o.token_ids for o in slow.generate(images, prompts, max_new_tokens=8)]
    assert [o.token_ids for o in lean.generate(images, prompts, max_new_tokens=8)] == expected


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_attention_of_a_few_queries_is_sdpa_over_the_masked_slots_query_by_query(batch, dtype):
    gen = torch.Generator().manual_seed(1)
    heads, d, capacity, n, m = 4, 64, 40, 29, 3
    cache = torch.randn(2, batch, heads, capacity, d, generator=gen).to(dtype)
    k, v = cache[0, :, :, :n], cache[1, :, :, :n]  # views with the cache's strides, as the lean layers pass them
    q = torch.randn(batch, heads, m, d, generator=gen).to(dtype)
    mask = torch.ones(batch, 1, m, n, dtype=torch.bool).tril(n - m)  # causal over the last m slots
    mask[-1, ..., :5] = False  # a left-padded row
    assert gemv.attends(q, k, v, mask) and not gemv.attends(q, k, v, mask.float())
    got = gemv.attend(q, k, v, mask, d ** -0.5)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, scale=d ** -0.5)
    tolerance = 0.01 if dtype == torch.bfloat16 else 1e-5  # bf16: the output's rounding
    assert got.dtype == dtype and got.shape == q.shape
    assert torch.allclose(got.double(), exact, rtol=tolerance, atol=tolerance), (got.double() - exact).abs().max()
    alone = gemv.attend(q[:, :, 1:2], k, v, mask[:, :, 1:2], d ** -0.5)  # one query: the bits it has among three
    assert torch.equal(alone, got[:, :, 1:2])


def test_eagle_verifies_with_the_decodes_kernel_so_stays_lossless(tmp_path):
    """A verification computes a tree of tokens in one forward, and each must get the bits a one-token decode step
    gives it, or a near-tie of the argmax can flip (seen on the 7B with torch's native bf16 GEMM verifying 11 rows
    beside our kernel decoding one). Our kernel computes a row the same in any batch, so it serves every verified
    row where it serves the decode's. The 7B's config with one text layer of width 1024 (layers of 1M weights, our
    kernel's) and a small vision tower."""
    import json

    import llava_accel as la
    from llava_accel.models.architecture import SHIPPED_CONFIGS
    from llava_accel.tasks import synthetic_samples

    d = json.loads(SHIPPED_CONFIGS["llava-hf/llava-1.5-7b-hf"].read_text())
    d["text_config"].update(hidden_size=1024, intermediate_size=1024, num_hidden_layers=1, num_attention_heads=8,
                            num_key_value_heads=8)
    d["vision_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)
    (tmp_path / "config.json").write_text(json.dumps(d))
    samples = synthetic_samples("synthetic-textvqa", 2)
    images, prompts = [s.image for s in samples], [s.prompt for s in samples]
    cpu = la.load_backend("cpu", model=str(tmp_path), no_weights=True, dtype="bfloat16", threads=1)
    eagle = la.load_backend("eagle", model=str(tmp_path), no_weights=True, device="cpu", dtype="bfloat16",
                            head="random")
    assert f"<= {UPCAST_MIN_ROWS - 1} rows" in eagle.describe()["gemv"]
    tree = torch.randn(2, 11, 1024).to(torch.bfloat16)  # a verification of 11 tokens, in a batch of 2
    for layer in (eagle.model.lm_head, eagle.model.model.language_model.layers[0].mlp.down_proj):
        assert _rows_independent(module_projection(layer), tree.flatten(0, 1))
    for image, prompt in zip(images, prompts):
        expected = cpu.generate([image], [prompt], max_new_tokens=24, min_new_tokens=24)[0].token_ids
        assert eagle.generate([image], [prompt], max_new_tokens=24, min_new_tokens=24)[0].token_ids == expected
