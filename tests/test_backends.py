"""Built-in backends on the tiny model: batching, padding and settings must not change a single token."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration

import llava_accel as la
from llava_accel.backends.cpu import cpu_has_native_bf16
from llava_accel.preprocessing import encode_batch

from .conftest import requires_cuda

MAX_NEW = 12


@pytest.fixture(scope="module", params=[("eager", {"device": "cpu", "dtype": "float32"}),
                                        ("cpu", {"dtype": "float32"})], ids=["eager-cpu-fp32", "cpu-fp32"])
def backend(request):
    name, options = request.param
    return la.load_backend(name, **options)


def test_padded_batch_equals_each_sample_alone(backend, mixed_batch):
    images, prompts = mixed_batch
    assert len({len(p) for p in prompts}) > 1  # really a mixed batch
    batched = backend.generate(images, prompts, max_new_tokens=MAX_NEW)
    alone = [backend.generate([i], [p], max_new_tokens=MAX_NEW)[0] for i, p in zip(images, prompts)]
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]
    assert all(len(o.token_ids) > 0 for o in batched)


def test_tokens_equal_plain_transformers_generate(backend, mixed_batch):
    images, prompts = mixed_batch
    model = LlavaForConditionalGeneration.from_pretrained(la.DEFAULT_MODEL, dtype=torch.float32).eval()
    inputs = encode_batch(backend.processor, images, prompts)
    tok = backend.processor.tokenizer
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = []
    for row in out[:, inputs["input_ids"].shape[1]:].tolist():
        expected.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    assert [o.token_ids for o in backend.generate(images, prompts, max_new_tokens=MAX_NEW)] == expected


def test_min_new_tokens_forces_length(backend, mixed_batch):
    images, prompts = mixed_batch
    outs = backend.generate(images[:2], prompts[:2], max_new_tokens=6, min_new_tokens=6)
    assert all(len(o.token_ids) == 6 for o in outs)


def test_describe_reports_resolved_settings(backend):
    d = backend.describe()
    assert d["device"] == "cpu" and d["dtype"] == "float32" and d["weights"] == "tiny-trained"
    assert d["attention"] == backend.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_attention_option_reaches_the_model(attention, mixed_batch):
    b = la.load_backend("cpu", dtype="float32", attention=attention)
    assert b.attention == attention
    assert b.model.model.language_model.config._attn_implementation == attention
    assert b.model.model.vision_tower.config._attn_implementation == attention


def test_eager_and_sdpa_attention_agree_in_fp32(mixed_batch):
    images, prompts = mixed_batch
    outs = [la.load_backend("cpu", dtype="float32", attention=a).generate(images, prompts, max_new_tokens=MAX_NEW)
            for a in ("eager", "sdpa")]
    assert [o.token_ids for o in outs[0]] == [o.token_ids for o in outs[1]]


def test_cpu_backend_picks_bf16_only_with_native_support():
    assert cpu_has_native_bf16("flags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16("Features\t: fp asimd bf16 i8mm\n")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse avx2 avx512f\n")
    b = la.load_backend("cpu")
    assert b.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert "bf16" in b.describe()["dtype_reason"] and b.describe()["threads"] == torch.get_num_threads()


def test_cpu_backend_sets_threads():
    before = torch.get_num_threads()
    try:
        b = la.load_backend("cpu", dtype="float32", threads=1)
        assert torch.get_num_threads() == 1 and b.describe()["threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_unreadable_image_is_one_line_error(tmp_path, backend):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(la.ImageError, match=r"cannot read image .*broken\.png"):
        backend.generate([bad], ["hi"])
    with pytest.raises(la.ImageError, match="image not found"):
        backend.generate([tmp_path / "missing.jpg"], ["hi"])


@requires_cuda
def test_eager_defaults_to_cuda_fp16(mixed_batch):
    b = la.load_backend("eager")
    assert b.device.type == "cuda" and b.dtype == torch.float16
    images, prompts = mixed_batch
    assert len(b.generate(images, prompts, max_new_tokens=4)) == 4
