"""benchmarks/gpu_check.py: exits at once without CUDA; its whole pipeline runs on the CPU with a shrunk 7B config,
without the packages the GPU image lacks (flash-attn, datasets, jiwer, fvcore)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402

# blocks the GPU image's missing packages, builds the 7B config shrunk to widths of 64, runs the sweep on the CPU
PIPELINE = """
import sys
for name in ("flash_attn", "datasets", "jiwer", "fvcore"):
    sys.modules[name] = None  # import fails as on the GPU image
sys.path.insert(0, {bench!r})
from pathlib import Path
import gpu_check
from transformers import LlavaConfig
from llava_accel.models.architecture import load_config
d = load_config(gpu_check.MODEL_ID).to_dict()
d["text_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2, head_dim=32)
d["vision_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
import torch
torch.set_num_threads(1)  # a tiny model: threads only add synchronisation (and spin on a busy machine)
loaded = gpu_check.random_llava(LlavaConfig(**d), "cpu", torch.float32)
cpu = {{"device": "cpu", "dtype": "float32"}}
cpu1 = {{"dtype": "float32", "threads": 1}}
# a quantised eager row first: it must get its own copy of the model, or the rows after it would run quantised
# weights, and must not become the reference that the rows after it are compared with
backends = gpu_check.parse_rows("eager,flash,eager+int8-dynamic,cpu,eagle", {{}})
backends = [(n, {{**(cpu1 if n == "cpu" else {{}} if n == "flash" else cpu), **o}}) for n, o in backends]
import llava_accel.registry as registry
real_load = registry.load_backend
def load_backend(name, **options):  # a backend that breaks must cost only its own row
    if name == "compile":
        raise RuntimeError("boom")
    return real_load(name, **options)
registry.load_backend = load_backend
backends.append(("compile", cpu))
gpu_check.run(loaded, backends, [2], Path({out!r}), budget_s=600, timed_batches=2)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_exits_at_once_without_cuda(tmp_path):
    code = (f"import sys, runpy; sys.argv = ['gpu_check.py', '--out', {str(tmp_path / 'r.json')!r}]\n"
            f"try:\n    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
            f"except SystemExit as e:\n    print(e.code, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"]  # exit code 2, and nothing slow was even imported
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("gpu_check: needs a CUDA GPU; torch ") and "sees none here" in done.stderr
    assert not (tmp_path / "r.json").exists()


def test_pipeline_runs_on_cpu_without_gpu_image_missing_packages(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-c", PIPELINE.format(bench=str(SCRIPT.parent), out=str(out))],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["weights"] == "random" and report["environment"]["gpu"] is None
    assert [(p["backend"], p["batch"]) for p in report["points"]] == [
        ("eager", 2), ("eager+int8-dynamic", 2), ("cpu", 2), ("eagle", 2)]
    assert report["failed"] == [{"backend": "compile", "batch": None, "error": "RuntimeError: boom"}]
    assert "RuntimeError: boom" in done.stderr  # with its traceback
    [skipped] = report["skipped"]
    assert skipped["backend"] == "flash" and skipped["reason"].startswith("needs the flash-attn package")
    for p in report["points"]:
        assert p["floor"]["prompt_len"] == 780  # 576 image + 204 text tokens
        # the floor is a model (FLOPs / peak, bytes / bandwidth); on a loaded CPU the cached peak can be low, so the
        # measured time is not asserted to exceed it (no timed assertions): only the ratio's arithmetic
        assert p["floor"]["latency_s"] > 0
        assert p["latency_over_floor"] == pytest.approx(p["latency_s"]["mean"] / p["floor"]["latency_s"])
        assert p["flops"]["prefill_per_sample"] > 0 and p["energy"]["label"] == "estimated"
        assert p["describe"]["attention"] == "sdpa" and p["describe"]["weights"] == "random"
    points = {p["backend"]: p for p in report["points"]}
    for name in ("cpu", "eagle"):  # same fp32 weights: the same tokens (eagle: with a random draft head)
        assert points[name]["agreement_with_eager"] == {"identical_answers": 1.0, "mean_common_prefix": 8.0,
                                                        "mean_length": 8.0, "unit": "token"}
        assert points[name]["describe"]["quantize"] is None
    assert points["eagle"]["backend_stats"]["verify_forwards"] > 0
    quantized = points["eager+int8-dynamic"]
    # its own copy of the model: the shared one it sits beside is not its footprint; eager's model is the shared one
    assert quantized["memory"]["shared_model_bytes"] > 0
    assert points["eager"]["memory"]["shared_model_bytes"] == 0
    assert quantized["describe"]["quantization"]["quantized_linears"] > 0
    assert 0 <= quantized["agreement_with_eager"]["identical_answers"] <= 1
    assert "batch" in done.stdout and "cpu" in done.stdout  # the printed table


def test_floor_parts_match_hand_counts():
    from transformers import LlavaConfig

    from llava_accel.models.architecture import build_model, load_config

    d = load_config(gpu_check.MODEL_ID).to_dict()
    h, i, layers, vocab = 64, 96, 3, d["text_config"]["vocab_size"]
    d["text_config"].update(hidden_size=h, intermediate_size=i, num_hidden_layers=layers, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16)
    d["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    model = build_model(LlavaConfig(**d), device="meta", dtype=torch.float16)
    # per layer: q and o (h x 4*16), k and v (h x 2*16), MLP 3 h x i, two RMSNorms; then final norm and LM head
    per_layer = 2 * h * 64 + 2 * h * 32 + 3 * h * i + 2 * h
    from llava_accel.quantize import decode_weight_bytes

    assert decode_weight_bytes(model) == 2 * (layers * per_layer + h + vocab * h)
    assert gpu_check.kv_bytes_per_token(model.config, torch.float16) == 2 * layers * 2 * 16 * 2
    f = gpu_check.floor(model, batch=2, prompt_len=100, new_tokens=5, prefill_flops=4e9, step_flops=1e3,
                        peak_flops=1e12, bandwidth=1e9)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert f.prefill_s == max(4e9 / 1e12, weights / 1e9)
    kv = 2 * (2 * layers * 2 * 16 * 2) * (100 + 5 / 2)
    assert f.decode_step_s == pytest.approx((decode_weight_bytes(model) + kv) / 1e9)
    assert f.latency_s == pytest.approx(f.prefill_s + 4 * f.decode_step_s) and f.decode_bound == "memory"


def test_random_prompts_have_exact_text_token_counts():
    from llava_accel.models.architecture import load_config
    from llava_accel.truncation import count_text_tokens

    from llava_accel.models.processor import llava_processor

    processor = llava_processor(load_config(gpu_check.MODEL_ID))  # what gpu_check.random_llava gives the model
    assert len(processor.tokenizer) == 32002 and processor.tokenizer.convert_tokens_to_ids("<image>") == 32000
    image_id = 32000
    equal = gpu_check.random_samples(processor, 3)
    assert [count_text_tokens(processor.tokenizer, s.prompt, image_id) for s in equal] == [204] * 3
    assert equal[0].image.size == (336, 336)
    ragged = [count_text_tokens(processor.tokenizer, s.prompt, image_id)
              for s in gpu_check.random_samples(processor, 8, ragged=True)]
    assert len(set(ragged)) > 1 and all(102 <= n <= 204 for n in ragged)


def test_every_quantised_default_row_runs_on_cuda_in_a_dtype_it_has_kernels_for():
    """The GPU check's defaults are fp16; CUDA int4 has bf16 kernels only: that row must switch dtype, not be
    skipped (which is what happened before this test: a lent GPU's minutes spent without an int4 row)."""
    rows = [(n, o) for n, o in gpu_check.parse_rows(",".join(gpu_check.BACKENDS), {"device": "cuda",
                                                                                    "dtype": "float16"})
            if o.get("quantize")]
    assert {o["quantize"] for _, o in rows} == {"int8", "int4"}
    resolved = {o["quantize"]: gpu_check.quantized_row(o, "cuda", torch.float16) for _, o in rows}
    assert resolved["int8"] == ({"device": "cuda", "dtype": "float16", "quantize": "int8"}, None)
    assert resolved["int4"] == ({"device": "cuda", "dtype": "bfloat16", "quantize": "int4"}, None)
    options, reason = gpu_check.quantized_row({"quantize": "int8-dynamic", "dtype": "float16"}, "cuda",
                                              torch.float16)
    assert reason == "quantize='int8-dynamic' has no kernel on cuda (available on: cpu); use 'int8' or 'int4'"
