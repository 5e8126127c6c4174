"""``no_weights``: the shipped 7B architecture scaled down to widths of 64 (same vocabulary, 336-px CLIP, 576 image
tokens), random weights made in the dtype asked, block by block; its refusals; the CLI flag and the sweep key."""

import weakref

import pytest
import torch

import llava_accel as la
from llava_accel.cli import main
from llava_accel.models import no_weights
from llava_accel.models.no_weights import NoWeightsError
from llava_accel.study.spec import SpecError, parse_spec
from llava_accel.tasks import synthetic_samples

MODEL_7B = "llava-hf/llava-1.5-7b-hf"


def _answer(backend, n=2, new=3):
    samples = synthetic_samples("synthetic-textvqa", n)
    return backend.generate([s.image for s in samples], [s.prompt for s in samples], max_new_tokens=new)


def test_random_weights_in_the_dtype_asked_with_the_real_processor(small_7b):
    backend = la.load_backend("cpu", model=small_7b, no_weights=True, dtype="bfloat16", threads=1)
    params = list(backend.model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16} and not any(p.is_meta for p in params)
    norm = backend.model.model.language_model.norm.weight
    assert torch.all(norm == 1) and backend.model.lm_head.weight.float().std() > 0
    described = backend.describe()
    assert described["weights"] == "random" and described["weights_init_s"] >= 0
    outputs = _answer(backend)
    assert [o.image_tokens for o in outputs] == [576, 576] and all(len(o.token_ids) <= 3 for o in outputs)
    again = la.load_backend("cpu", model=small_7b, no_weights=True, dtype="bfloat16", threads=1)
    assert all(torch.equal(a, b) for a, b in zip(params, again.model.parameters()))  # same seed, same weights


def test_quantised_block_by_block(small_7b, monkeypatch):
    made, full_precision = [], []
    materialize = no_weights.materialize

    def spy(model, device, dtype, seed=0, on_block=None):
        def hook(net, names):
            # the full-precision layers of the blocks made before: freed once quantised, not at the end (no
            # gc.collect() here: the 7B must not wait for the cycle collector either)
            assert not [r for r in full_precision if r() is not None]
            full_precision.extend(weakref.ref(net.get_submodule(n)) for n in names
                                  if n.startswith("model.language_model") and n.endswith("proj"))
            on_block(net, names)
            made.append(names)
        return materialize(model, device, dtype, seed, hook)

    monkeypatch.setattr(no_weights, "materialize", spy)
    backend = la.load_backend("cpu", model=small_7b, no_weights=True, quantize="int8-dynamic", threads=1)
    report = backend.describe()["quantization"]
    assert report["quantized_linears"] == 2 * 7 + 1 and report["skipped_linears"] == []  # 7 per layer + LM head
    assert report["weight_bytes_after"] < report["weight_bytes_before"]
    layer = "model.language_model.layers.0"
    assert [n for n in made if n[0].startswith(layer)][0] == [f"{layer}.{m}" for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")]
    assert len(full_precision) == 2 * 7 and len(_answer(backend, n=1)) == 1


def test_7b_memory_need_counted_on_meta():
    """The shipped 7B: 7,063,427,072 parameters, counted without allocating; int8 Linear weights take a byte."""
    from accelerate import init_empty_weights
    from transformers import LlavaForConditionalGeneration

    from llava_accel.models.architecture import load_config
    from llava_accel.quantize import BlockQuantizer

    with init_empty_weights(include_buffers=False):
        model = LlavaForConditionalGeneration(load_config(MODEL_7B))
    need, block = no_weights.weight_bytes(model, torch.bfloat16, lambda name, module: None)
    assert need == 2 * 7_063_427_072 and 0 < block < need / 30
    int8 = no_weights.weight_bytes(model, torch.float32, BlockQuantizer("int8-dynamic", torch.device("cpu")).
                                   bytes_per_weight)[0]
    assert 6.7e9 < int8 < 8.5e9  # language-model Linears and LM head in int8, vision and embeddings in fp32


def test_refuses_before_allocating_when_memory_is_short(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(no_weights, "available_bytes", lambda device: 8 * 2**30)
    monkeypatch.setattr(no_weights, "materialize", lambda *a, **k: pytest.fail("allocated before refusing"))
    with pytest.raises(NoWeightsError) as err:
        la.load_backend("cpu", model=MODEL_7B, no_weights=True, dtype="bfloat16")
    message = str(err.value)
    assert "\n" not in message and "in bfloat16 needs about 13." in message and "8.0 GiB available" in message
    image = tmp_path / "x.png"
    synthetic_samples("synthetic-coco", 1)[0].image.save(image)
    assert main(["generate", "--model", MODEL_7B, "--no-weights", "--dtype", "bfloat16", "--image", str(image),
                 "--prompt", "hi"]) == 2
    assert capsys.readouterr().err.startswith("llava-accel: error: no_weights: llava-hf/llava-1.5-7b-hf")


def test_refuses_a_model_whose_config_is_not_shipped(tmp_path):
    with pytest.raises(NoWeightsError, match="^no_weights needs a model whose configuration ships with llava_accel "
                                             r"\(llava-hf/llava-1.5-7b-hf\) or a local folder"):
        la.load_backend("cpu", model="someone/llava-13b", no_weights=True)
    with pytest.raises(la.LlavaAccelError, match="drop device_map"):
        la.load_backend("eager", model=MODEL_7B, device="cpu", no_weights=True, device_map="auto")


def test_cli_measure_says_weights_random_and_flags_quality(small_7b, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["measure", "--backend", "cpu", "--model", small_7b, "--no-weights", "--task", "synthetic-textvqa",
                 "--limit", "2", "--max-new-tokens", "2", "--warmup", "1", "--no-flops", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "(weights: random, made in" in table and "(meaningless: weights: random)" in table
    result = la.MeasureResult.from_json(out)
    assert result.config["backend"]["weights"] == "random" and not result.validity.valid
    assert not result.validity.checks["weights"]
    assert any(r.startswith("weights: random (no_weights): WER") for r in result.validity.reasons)
    assert result.memory.rss_peak_bytes > 0


def test_sweep_key():
    base = {"backends": ["cpu"], "tasks": ["synthetic-coco"], "batch_sizes": [1],
            "backend_options": {"cpu": {"threads": 1}}}
    [(point, _)] = parse_spec({**base, "no_weights": True}).points(["cpu"])
    assert point.backend_options == {"no_weights": True, "threads": 1}
    [(plain, _)] = parse_spec(base).points(["cpu"])
    assert plain.backend_options == {"threads": 1}  # specs without the key: the same points as before
    with pytest.raises(SpecError, match="field 'no_weights' must be a bool"):
        parse_spec({**base, "no_weights": "yes"})


def test_cpu_picks_bf16_where_fp32_does_not_fit(small_7b, monkeypatch):
    from llava_accel.backends import cpu

    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    monkeypatch.setattr(cpu.CpuBackend, "default_dtype", "float32")
    assert la.load_backend("cpu", model=small_7b, no_weights=True, threads=1).dtype == torch.float32  # it fits
    need = {}

    def short(device):  # room for the bf16 weights, not for the fp32 ones
        return need["bf16"] + (need["fp32"] - need["bf16"]) // 2

    need["fp32"] = no_weights.weight_bytes(_meta(small_7b), torch.float32, lambda n, m: None)[0]
    need["bf16"] = need["fp32"] // 2
    monkeypatch.setattr(no_weights, "available_bytes", short)
    backend = la.load_backend("cpu", model=small_7b, no_weights=True, threads=1)
    assert backend.dtype == torch.bfloat16 and backend.describe()["dtype_reason"].startswith(
        "bfloat16: its float32 weights need about")
    assert backend.describe()["upcast"] != "off"
    with pytest.raises(NoWeightsError, match="in float32 needs about"):  # a dtype asked for is never swapped
        la.load_backend("cpu", model=small_7b, no_weights=True, threads=1, dtype="float32")


def _meta(folder):
    from llava_accel.models.architecture import build_model, load_config

    return build_model(load_config(folder))
