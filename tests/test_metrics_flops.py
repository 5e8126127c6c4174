"""FLOPs: a closed form derived from the tiny model's config, attention-implementation independence, the meta twin,
the published 7B figures, and the MFU peaks."""

import json

import pytest
import torch

import llava_accel as la
from llava_accel.metrics import flops as F
from llava_accel.metrics import mfu
from llava_accel.models.architecture import load_config
from llava_accel.tasks import synthetic_samples


def closed_form_prefill(cfg, seq_len: int, logits: str = "all", image_size: int | None = None) -> int:
    """Per sample, 2 FLOPs per multiply-add; matmuls, convolution and attention only.

    vision (CLIP, N = patches + CLS positions, every layer runs):
        conv 2*hv*P*(3*p*p) + layers * [q,k,v,o 4*(2*N*hv*hv) + attention 2*(2*N*N*hv) + MLP 2*(2*N*hv*iv)]
    projector on the P patch features (CLS dropped): 2*P*hv*ht + 2*P*ht*ht
    language model over S positions: layers * [q,o 2*(2*S*ht*nh*hd) + k,v 2*(2*S*ht*nkv*hd)
        + attention 2*nh*S*S*(hd+hd) + MLP 3*(2*S*ht*it)]
    LM head 2*ht*V per position that gets logits (S, or 1 for "last").
    """
    v, t = cfg.vision_config, cfg.text_config
    hv, iv, p = v.hidden_size, v.intermediate_size, v.patch_size
    patches = ((image_size or v.image_size) // p) ** 2
    n = patches + 1
    vision = 2 * hv * patches * 3 * p * p + v.num_hidden_layers * (8 * n * hv * hv + 4 * n * n * hv + 4 * n * hv * iv)
    ht, it, nh, hd, nkv = t.hidden_size, t.intermediate_size, t.num_attention_heads, t.head_dim, t.num_key_value_heads
    projector = 2 * patches * hv * ht + 2 * patches * ht * ht
    s = seq_len
    lm = t.num_hidden_layers * (4 * s * ht * nh * hd + 4 * s * ht * nkv * hd + 4 * nh * s * s * hd + 6 * s * ht * it)
    head = 2 * (s if logits == "all" else 1) * ht * t.vocab_size
    return vision + projector + lm + head


def closed_form_decode_step(cfg, cache_len: int) -> int:
    """One new token attending to cache_len + 1 keys; LM head on that token."""
    t = cfg.text_config
    ht, it, nh, hd, nkv = t.hidden_size, t.intermediate_size, t.num_attention_heads, t.head_dim, t.num_key_value_heads
    per_layer = 4 * ht * nh * hd + 4 * ht * nkv * hd + 4 * nh * (cache_len + 1) * hd + 6 * ht * it
    return t.num_hidden_layers * per_layer + 2 * ht * t.vocab_size


@pytest.fixture(scope="module")
def padded_batch():
    """Four samples of different prompt lengths: a really left-padded batch."""
    samples = synthetic_samples("synthetic-scienceqa", 3, seed=3) + synthetic_samples("synthetic-coco", 1, seed=3)
    return [s.image for s in samples], [s.prompt for s in samples]


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def tiny(request):
    return la.load_backend("eager", device="cpu", dtype="float32", attention=request.param)


@pytest.mark.parametrize("logits", ["all", "last"])
def test_real_model_count_equals_closed_form(tiny, padded_batch, logits):
    inputs = tiny.prepare(*padded_batch)
    batch, seq_len = inputs["input_ids"].shape
    assert inputs["attention_mask"][:, 0].min() == 0  # padded indeed
    counted = F.count_generation(tiny.model, inputs["input_ids"], inputs["pixel_values"], inputs["attention_mask"],
                                 logits=logits)
    cfg = tiny.model.config
    assert counted.prefill == batch * closed_form_prefill(cfg, seq_len, logits)
    assert counted.decode_at_prompt == batch * closed_form_decode_step(cfg, seq_len)
    assert counted.decode_at_prompt_plus_1 == batch * closed_form_decode_step(cfg, seq_len + 1)


def test_cpu_sdpa_kernel_is_counted(padded_batch):
    """Without the custom mapping FlopCounterMode misses the CPU SDPA kernel; with it, sdpa == eager."""
    sdpa = la.load_backend("eager", device="cpu", dtype="float32", attention="sdpa")
    assert sdpa.attention == "sdpa"
    inputs = sdpa.prepare(*padded_batch)
    with torch.inference_mode(), torch.utils.flop_counter.FlopCounterMode(display=False) as plain:
        sdpa.model(**inputs)
    with torch.inference_mode(), F.flop_counter() as mapped:
        sdpa.model(**inputs)
    assert aten_cpu_sdpa_seen(mapped)
    assert plain.get_total_flops() < mapped.get_total_flops()
    assert mapped.get_total_flops() == inputs["input_ids"].shape[0] * closed_form_prefill(
        sdpa.model.config, inputs["input_ids"].shape[1])


def aten_cpu_sdpa_seen(counter) -> bool:
    return any("flash_attention_for_cpu" in str(op) for op in counter.get_flop_counts()["Global"])


def test_attention_formulas_agree_across_layouts():
    b, h, sq, sk, d = 2, 4, 7, 9, 16
    expected = torch.utils.flop_counter.sdpa_flop_count((b, h, sq, d), (b, h, sk, d), (b, h, sk, d))
    assert F._sdpa_bhsd((b, h, sq, d), (b, h, sk, d), (b, h, sk, d)) == expected
    assert F._flash_attn_bshd((b, sq, h, d), (b, sk, h, d), (b, sk, h, d)) == expected
    # varlen: 2 rows packed, counted as the padded batch (rows x max lengths), as eager counts it
    assert F._flash_attn_varlen((10, h, d), (12, h, d), (12, h, d), (b + 1,), (b + 1,), sq, sk) == expected
    # GQA: query heads count
    assert F._flash_attn_bshd((b, sq, h, d), (b, sk, 1, d), (b, sk, 1, d)) == expected


def test_flop_model_on_meta_equals_closed_form_for_any_shape():
    cfg = load_config(la.DEFAULT_MODEL)
    size = (cfg.vision_config.image_size,) * 2
    for logits in ("all", "last"):
        model = F.FlopModel.fit(cfg, size, logits=logits)
        for seq_len, batch in ((65, 1), (90, 3), (300, 2)):
            assert model.prefill(seq_len, batch) == batch * closed_form_prefill(cfg, seq_len, logits)
            assert model.decode_step(seq_len, batch) == batch * closed_form_decode_step(cfg, seq_len)
    # decode of n tokens: n - 1 steps at cache S, S+1, ..., S+n-2
    assert model.decode(80, 5, 2) == 2 * sum(closed_form_decode_step(cfg, 80 + k) for k in range(4))
    assert model.decode(80, 1) == 0


def test_another_image_size_interpolates_and_counts_its_tokens():
    """img_size 32 on the 64-px tiny model (patch 16): 4 patches instead of 16 (CLIP interpolates its positions)."""
    cfg = load_config(la.DEFAULT_MODEL)
    model = F.FlopModel.fit(cfg, (32, 32), logits="all")
    assert model.base_len == 4 + 1
    assert model.prefill(40, 2) == 2 * closed_form_prefill(cfg, 40, "all", image_size=32)
    assert F.architecture_flops(cfg, 1, 10, image_size=32)["sequence_length"] == 14


def test_meta_twin_uses_eager_attention_and_is_cached():
    cfg = load_config(la.DEFAULT_MODEL)
    twin = F.meta_twin(cfg)
    assert twin is F.meta_twin(cfg)
    assert {twin.config.text_config._attn_implementation, twin.config.vision_config._attn_implementation} == {"eager"}
    assert next(twin.parameters()).device.type == "meta"


@pytest.mark.parametrize("batch, published", [(1, 11.03e12), (4, 44.13e12)])
def test_7b_published_prefill_figures(batch, published):
    """576 image + 204 text tokens, every position through the LM head: the reference study's figures."""
    out = F.architecture_flops(load_config("llava-hf/llava-1.5-7b-hf"), batch, 204)
    assert out["image_tokens"] == 576 and out["sequence_length"] == 780
    assert out["parameters"] == 7_063_427_072
    assert out["prefill_flops"] == pytest.approx(published, rel=1e-3)


def test_flops_cli_prints_json(capsys):
    from llava_accel.cli import main

    assert main(["flops", "--model", "llava-hf/llava-1.5-7b-hf", "--batch-size", "1", "--text-tokens", "204"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "llava-hf/llava-1.5-7b-hf"
    assert out["prefill_flops"] == pytest.approx(11.03e12, rel=1e-3)
    assert out["logits"] == "all" and out["device"] == "meta"


def test_fvcore_cross_check_is_close_but_lower(tiny, padded_batch):
    pytest.importorskip("fvcore")
    inputs = tiny.prepare(*padded_batch)
    batch, seq_len = inputs["input_ids"].shape
    ours = batch * closed_form_prefill(tiny.model.config, seq_len)
    theirs = F.fvcore_prefill_flops(tiny.model, inputs)
    # fvcore drops the unused last CLIP layer and (with sdpa) the attention kernels: lower, same order
    assert 0.5 * ours < theirs < ours


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H200", 989.4),
    ("NVIDIA GH200 480GB", 989.4),
    ("NVIDIA H100 80GB HBM3", 989.4),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L40S", 362.0),
    ("NVIDIA L4", 121.0),
    ("Tesla T4", 65.0),
    ("NVIDIA A10G", None),  # not in the table: no guess
])
def test_gpu_peak_table(name, tflops):
    peak = mfu.gpu_peak(name)
    assert peak.flops_per_s == (None if tflops is None else tflops * 1e12)
    assert peak.source


def test_cpu_peak_is_the_fastest_dtype_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    speed = {torch.float32: 1.5e11, torch.bfloat16: 6e8, torch.float16: 1e9}  # bf16 and fp16 emulated

    def fake(dtype, n=mfu.CPU_MATMUL_N, repeats=10):
        calls.append((dtype, n))
        return speed[dtype]
    monkeypatch.setattr(mfu, "measure_matmul_peak", fake)
    first, second = mfu.device_peak("cpu"), mfu.device_peak("cpu")
    assert first.flops_per_s == second.flops_per_s == 1.5e11  # one peak for every dtype: the fastest
    assert "in float32, the fastest of float32, bfloat16, float16" in first.source
    assert calls == [(dt, mfu.CPU_SCREEN_N) for dt in mfu.CPU_DTYPES] + [(torch.float32, mfu.CPU_MATMUL_N)]
    assert (tmp_path / "llava_accel" / "cpu_peak.json").exists() and "measured" in first.source


def test_matmul_peak_is_plausible():
    assert 1e8 < mfu.measure_matmul_peak(torch.float32, n=256, repeats=3) < 1e14
