"""benchmarks/llama_cpp.py: the text model exported for llama.cpp is the one ``no_weights`` makes (the shipped 7B
config scaled down to width 64; same seed, bit-identical logits); llama.cpp's converter, quantiser and llama-bench
run on it when the llama.cpp source ($LLAMA_CPP_SRC) and binaries are present."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import llama_cpp  # noqa: E402

from llava_accel.models.no_weights import random_model  # noqa: E402
from llava_accel.models.processor import llava_tokenizer  # noqa: E402

IDS = torch.tensor([[1, 3148, 1001, 29901, 32000, 29871, 13, 5618, 338, 32001, 32063, 2]])


@pytest.mark.parametrize("flags, name, extra", [
    ({"avx2", "amx_int8"}, "m-q4_0.gguf", ["-ub", 1]),  # ggml's AMX matmul crashes on batches: a token at a time
    ({"avx2", "amx_int8"}, "m-bf16.gguf", []),  # bf16 weights never go to the AMX buffer
    ({"avx2", "avx512_vnni"}, "m-q4_0.gguf", []),
])
def test_llama_bench_makes_the_context_a_token_at_a_time_where_amx_would_crash(monkeypatch, flags, name, extra):
    from llava_accel import cpuinfo

    monkeypatch.setattr(cpuinfo, "cpu_flags", lambda: flags)
    assert llama_cpp.amx_batch(Path(name)) == extra


@pytest.fixture(scope="module")
def exported(small_7b, tmp_path_factory):
    # a shard limit below one layer's size: several shards, written while the model is made
    return llama_cpp.export_text_model(small_7b, tmp_path_factory.mktemp("hf"), seed=3, max_shard_bytes=100_000)


def test_exported_model_is_no_weights_text_model(small_7b, exported):
    from transformers import LlamaForCausalLM

    index = json.loads((exported / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    llama = LlamaForCausalLM.from_pretrained(exported).eval()
    assert llama.dtype == torch.bfloat16 and llama.config.vocab_size == 32064
    llava, _, _ = random_model(small_7b, torch.device("cpu"), torch.bfloat16, "sdpa", seed=3)
    assert set(llama.state_dict()) == set(index["weight_map"])
    with torch.no_grad():
        ours, theirs = llama(input_ids=IDS).logits, llava(input_ids=IDS).logits
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs)
    other, _, _ = random_model(small_7b, torch.device("cpu"), torch.bfloat16, "sdpa", seed=4)
    with torch.no_grad():
        assert not torch.equal(other(input_ids=IDS).logits, ours)  # the comparison can fail


def test_exported_tokenizer_is_the_shipped_one_padded_to_the_vocabulary(exported):
    from transformers import AutoTokenizer

    tokenizer, shipped = AutoTokenizer.from_pretrained(exported), llava_tokenizer()
    assert len(tokenizer) == 32064
    text = "USER: <image>\nWhat is written here? ASSISTANT: Hello <pad>"
    assert tokenizer(text).input_ids == shipped(text).input_ids
    assert tokenizer.convert_ids_to_tokens(32063) == "[PAD32063]"


def test_bench_without_llama_bench_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA_CPP_BIN", str(tmp_path))
    with pytest.raises(llama_cpp.LlamaCppError, match="build llama.cpp with `bash benchmarks/build_llama_cpp.sh`"):
        llama_cpp.bench(tmp_path / "x.gguf")
    assert llama_cpp.main(["bench", "--gguf", str(tmp_path / "x.gguf")]) == 2


@pytest.fixture(scope="module")
def converted(exported, tmp_path_factory):
    if not os.environ.get("LLAMA_CPP_SRC"):
        pytest.skip("set LLAMA_CPP_SRC to a llama.cpp source folder (bash benchmarks/build_llama_cpp.sh unpacks one)")
    pytest.importorskip("sentencepiece", reason="convert_hf_to_gguf.py needs it: pip install -e .[llamacpp]")
    return llama_cpp.convert(exported, tmp_path_factory.mktemp("gguf") / "small-bf16.gguf", "bf16")


def test_convert_keeps_the_weights_bit_for_bit(exported, converted):
    gguf = pytest.importorskip("gguf", reason="pip install -e .[llamacpp]")
    from safetensors.torch import load_file

    index = json.loads((exported / "model.safetensors.index.json").read_text())
    weights = {}
    for shard in set(index["weight_map"].values()):
        weights.update(load_file(exported / shard))
    reader = gguf.GGUFReader(converted)
    tensors = {t.name: t for t in reader.tensors}
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 32064
    for ours, theirs in [("model.embed_tokens.weight", "token_embd.weight"), ("lm_head.weight", "output.weight"),
                         ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight")]:
        assert tensors[theirs].tensor_type == gguf.GGMLQuantizationType.BF16
        raw = torch.from_numpy(tensors[theirs].data.copy()).view(torch.bfloat16).reshape(weights[ours].shape)
        assert torch.equal(raw, weights[ours])


def test_quantize_and_bench_the_small_model(converted, tmp_path):
    if not (llama_cpp.llama_cpp_bin() / "llama-bench").exists():
        pytest.skip(f"no llama-bench in {llama_cpp.llama_cpp_bin()}: bash benchmarks/build_llama_cpp.sh")
    q4 = llama_cpp.quantize(converted, tmp_path / "small-q4_0.gguf", "q4_0")
    assert q4.stat().st_size < converted.stat().st_size
    result = llama_cpp.bench(q4, threads=1, new_tokens=3, depth=5, repetitions=2)
    assert result["record"]["n_gen"] == 3 and result["record"]["n_depth"] == 5
    assert len(result["ms_per_token_samples"]) == 2 and result["ms_per_token"] > 0 and result["tokens_per_s"] > 0
