"""``llava_accel.upcast``: bf16 weights whose many-row matmuls run in fp32, and where the CPU backends use it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import llava_accel as la
from llava_accel.backends import cpu
from llava_accel.errors import OptionError
from llava_accel.tasks import synthetic_samples
from llava_accel.upcast import UPCAST_MIN_ROWS, cpu_gemms


def test_many_rows_in_fp32_few_rows_in_bf16():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.Linear(48, 16, bias=False), nn.Linear(16, 8).float())
    model[:2].bfloat16()
    assert cpu_gemms(model, upcast=True, own_max_rows=0)[0] == 2  # the fp32 layer is left alone
    layer = model[0]
    many = torch.randn(2, UPCAST_MIN_ROWS // 2, 32).bfloat16()
    expected = F.linear(many.float(), layer.weight.float(), layer.bias.float()).bfloat16()
    assert torch.equal(layer(many), expected)
    few = torch.randn(3, 32).bfloat16()
    assert torch.equal(layer(few), F.linear(few, layer.weight, layer.bias))
    assert model[1](many @ torch.zeros(32, 48).bfloat16()).dtype == torch.bfloat16


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda cpuinfo=None: False)


def _prefill_logits(backend):
    samples = synthetic_samples("synthetic-textvqa", 2)
    inputs = backend.prepare([s.image for s in samples], [s.prompt for s in samples])
    with torch.inference_mode():
        return backend.model(**inputs).logits.float()


def test_cpu_backend_upcasts_bf16_where_the_cpu_has_no_native_bf16(no_native_bf16, monkeypatch):
    on = la.load_backend("cpu", dtype="bfloat16", threads=1)
    off = la.load_backend("cpu", dtype="bfloat16", threads=1, upcast=False)
    assert "float32" in on.describe()["upcast"] and off.describe()["upcast"] == "off"
    dtypes, linear = [], F.linear  # the dtype every F.linear computes in (a CPU with native bf16 may give the
    monkeypatch.setattr(F, "linear", lambda x, *a, **k: dtypes.append(x.dtype) or linear(x, *a, **k))  # same bits)
    a = _prefill_logits(on)
    upcast_calls, _ = dtypes.count(torch.float32), dtypes.clear()
    b = _prefill_logits(off)
    assert upcast_calls > 0 and torch.float32 not in dtypes  # the prompt's matmuls took the fp32 path ...
    assert torch.allclose(a, b, atol=0.05 * float(b.abs().max()))  # ... the same sums, in another order
    assert la.load_backend("cpu", threads=1).describe()["upcast"] == "off"  # fp32: nothing to upcast


def test_upcast_option_is_checked():
    with pytest.raises(OptionError, match="upcast must be True or False"):
        la.load_backend("cpu", upcast="yes")


def test_eagle_with_a_random_head_is_lossless(no_native_bf16):
    samples = synthetic_samples("synthetic-coco", 3)
    images, prompts = [s.image for s in samples], [s.prompt for s in samples]
    plain = la.load_backend("cpu", dtype="bfloat16", threads=1)
    eagle = la.load_backend("eagle", device="cpu", dtype="bfloat16", head="random")
    assert eagle.describe()["upcast"] == plain.describe()["upcast"] != "off"
    assert eagle.head_config.training["random"]
    expected = [o.token_ids for o in plain.generate(images, prompts, max_new_tokens=12)]
    assert [o.token_ids for o in eagle.generate(images, prompts, max_new_tokens=12)] == expected


def test_cli_passes_upcast_and_head():
    from llava_accel.cli import _backend_options, build_parser

    args = build_parser().parse_args(["generate", "--image", "x.png", "--prompt", "hi", "--upcast", "off",
                                      "--head", "random"])
    assert _backend_options(args) == {"upcast": False, "head": "random"}
    assert "upcast" not in _backend_options(build_parser().parse_args(["generate", "--image", "x", "--prompt", "hi"]))
