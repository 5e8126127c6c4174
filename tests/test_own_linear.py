"""Our quantised Linear layers (``llava_accel.own_linear``): siblings stored together and run as one layer give the
same bits as each alone, at every row count; a cast of the model leaves their scales as they are."""

import pytest
import torch
from torch import nn

from llava_accel import gemv
from llava_accel.int4 import Int4Linear
from llava_accel.int8 import Int8Linear
from llava_accel.lean.layer import layer_weights
from llava_accel.own_linear import QUANTIZE_ROWS, as_bits, store_together

pytestmark = pytest.mark.skipif(gemv.unavailable_reason() is not None,
                                reason=f"our kernels do not run here: {gemv.unavailable_reason()}")
LAYERS = (Int8Linear, Int4Linear)


def _siblings(cls, widths=(96, 32, 32, 96), k=64):
    torch.manual_seed(0)
    return [cls.from_linear(nn.Linear(k, n, bias=False)) for n in widths]


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("rows", [1, 3, 70])  # 70: int4 dequantises for a GEMM from 64 rows
def test_joined_layer_gives_each_layers_bits(cls, rows):
    layers = _siblings(cls)
    x = torch.randn(rows, 64)
    alone = [layer(x) for layer in layers]
    store_together(layers)
    assert [torch.equal(layer(x), y) for layer, y in zip(layers, alone)] == [True] * 4
    joined = cls.join(layers[:3])
    assert joined is not None and joined.out_features == 160
    assert joined.packed.data_ptr() == layers[0].packed.data_ptr() if cls is Int4Linear else \
        joined.weight.data_ptr() == layers[0].weight.data_ptr()  # a view: no copy
    assert torch.equal(joined(x), torch.cat(alone[:3], -1))
    assert cls.join(layers[1:]) is not None and cls.join([layers[0], layers[2]]) is None  # not adjacent


@pytest.mark.parametrize("cls", LAYERS)
def test_quantised_a_few_rows_at_a_time_as_whole(cls):
    linear = nn.Linear(64, QUANTIZE_ROWS * 2 + 5, bias=False)  # two whole chunks and a part
    whole, chunked = cls.quantize(linear.weight), cls.from_linear(linear)
    assert [torch.equal(as_bits(a), b) for a, b in zip(whole, chunked.tensors())] == [True] * len(whole)


@pytest.mark.parametrize("cls", LAYERS)
def test_layers_apart_or_with_bias_do_not_join(cls):
    layers = _siblings(cls)
    assert cls.join(layers[:2]) is None  # each in its own buffers
    with_bias = cls.from_linear(nn.Linear(64, 32))
    store_together([layers[0], with_bias])
    assert cls.join([layers[0], with_bias]) is None


def test_int4_layers_of_two_layouts_do_not_join():
    blocked, rows = _siblings(Int4Linear, widths=(32, 40))  # 40 rows do not fill blocks of 16: Q4_0's layout
    store_together([blocked, rows])
    assert (Int4Linear.join([blocked, rows]) is None) == gemv.q4_blocked_kernel()


@pytest.mark.parametrize("cls", LAYERS)
def test_a_cast_of_the_model_keeps_the_scales(cls):
    layer = _siblings(cls, widths=(32,))[0]
    x = torch.randn(2, 64)
    before = layer(x)
    layer.to(torch.bfloat16)
    assert torch.equal(layer(x), before)


def test_quantised_7b_shaped_layer_runs_qkv_and_gate_up_as_one_call():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from llava_accel.quantize import RECIPES

    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    layer = LlamaDecoderLayer(config, 0)
    recipe = next(r for r in RECIPES[("int8-dynamic", "cpu")] if r.package == "llava-accel")
    names = [n for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
    recipe.apply(layer, names)
    weights = layer_weights(layer)
    assert len(weights.qkv) == 1 and weights.qkv[0].parts == (128, 64, 64)
    assert len(weights.gate_up) == 1 and weights.gate_up[0].parts == (256, 256)
