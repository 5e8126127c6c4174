"""The cpu backend's own greedy loop (``llava_accel.lean.greedy``) against transformers' ``generate`` on the same
model: the same tokens in every dtype and quantisation mode, the same streamer calls, and ``generate`` kept, with its
reason, for a model the loop does not reproduce."""

import pytest
import torch

import llava_accel as la
from llava_accel import gemv
from llava_accel.errors import BackendUnavailableError, LlavaAccelError
from llava_accel.lean.greedy import unsupported_reason
from llava_accel.models.loading import load_model

MAX_NEW = 12


class Recorder:
    """A streamer that keeps what it is given."""

    def __init__(self) -> None:
        self.calls: list[list[list[int]] | list[int]] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(value.tolist())

    def end(self) -> None:
        self.ended = True


def _pair(dtype: str, quantize: str | None = None):
    """(lean, generate) backends sharing one model: quantised once, in place, by the first."""
    lean = la.load_backend("cpu", dtype=dtype, quantize=quantize)
    return lean, la.load_backend("cpu", model=lean.loaded, dtype=dtype, loop="generate")


@pytest.mark.parametrize("dtype,quantize", [("float32", None), ("bfloat16", None), ("bfloat16", "int8"),
                                            ("float32", "int8-dynamic"), ("bfloat16", "int4")])
def test_lean_loop_gives_generates_tokens(dtype, quantize, mixed_batch, monkeypatch):
    # the loop's logic, checked against generate with the same kernels: its decode attention is otherwise our kernel
    # (llava_accel.gemv.attend, checked against SDPA in test_gemv.py), whose last bits differ from torch's SDPA that
    # generate runs, which at the tiny model's near-ties can pick another token
    monkeypatch.setattr(gemv, "attends", lambda q, k, v, mask: False)
    lean, generate = _pair(dtype, quantize)
    assert lean.describe()["loop"] == "lean" and generate.describe()["loop"] == "generate"
    images, prompts = mixed_batch
    for min_new in (None, MAX_NEW):
        got = lean.generate(images, prompts, max_new_tokens=MAX_NEW, min_new_tokens=min_new)
        expected = generate.generate(images, prompts, max_new_tokens=MAX_NEW, min_new_tokens=min_new)
        assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    short = lean.generate(images, prompts, max_new_tokens=MAX_NEW)
    assert len({len(o.token_ids) for o in short}) > 1  # rows ended at different steps: padding after EOS exercised


def test_streamer_sees_what_generate_gives_it(mixed_batch):
    lean, generate = _pair("float32")
    images, prompts = mixed_batch
    seen = []
    for backend in (lean, generate):
        recorder = Recorder()
        backend.generate(images, prompts, max_new_tokens=MAX_NEW, streamer=recorder)
        assert recorder.ended
        seen.append(recorder.calls)
    assert seen[0] == seen[1] and len(seen[0]) > 2  # the prompt ids, then each step's tokens, pads included


def test_lean_loop_does_not_call_generate(mixed_batch, monkeypatch):
    lean = la.load_backend("cpu", dtype="float32")

    def refuse(*args, **kwargs):
        raise AssertionError("generate was called")

    monkeypatch.setattr(lean.model, "generate", refuse)
    images, prompts = mixed_batch
    assert all(o.token_ids for o in lean.generate(images, prompts, max_new_tokens=4))


def test_grouped_kv_heads(tmp_path, mixed_batch):
    """2 key/value heads for 4 query heads (LLaVA-1.5 has none, other Llama models do): still generate's tokens."""
    from llava_accel.models import architecture, tiny

    spec = tiny.TinySpec(text_layers=2)
    tokenizer = tiny.build_tokenizer(tiny.default_corpus(n=100), spec.vocab_size)
    config = tiny.tiny_config(spec, tokenizer)
    config.text_config.num_key_value_heads = 2
    model = architecture.build_model(config, device="cpu", seed=5)
    tiny.save_tiny(tmp_path / "gqa", model, tiny.build_processor(tokenizer, spec), {"weights": "tiny-random"})
    lean = la.load_backend("cpu", model=str(tmp_path / "gqa"), dtype="float32")
    generate = la.load_backend("cpu", model=lean.loaded, dtype="float32", loop="generate")
    images, prompts = mixed_batch
    got, expected = (b.generate(images, prompts, max_new_tokens=8, min_new_tokens=8) for b in (lean, generate))
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]


def test_model_whose_generation_config_changes_logits_keeps_generate():
    loaded = load_model(None, device=torch.device("cpu"), dtype=torch.float32)
    assert unsupported_reason(loaded.model) is None
    loaded.model.generation_config.repetition_penalty = 1.3
    reason = unsupported_reason(loaded.model)
    assert "repetition_penalty" in reason
    backend = la.load_backend("cpu", model=loaded, dtype="float32")
    assert backend.describe()["loop"] == "generate" and backend.describe()["loop_reason"] == reason
    with pytest.raises(BackendUnavailableError, match="loop='lean' is not available: .*repetition_penalty") as err:
        la.load_backend("cpu", model=loaded, dtype="float32", loop="lean")
    assert "\n" not in str(err.value)
    with pytest.raises(BackendUnavailableError, match="backend 'eagle' cannot decode .* exactly as generate does: "
                                                      ".*repetition_penalty.*; use 'eager'"):
        la.load_backend("eagle", model=loaded, device="cpu", dtype="float32")


def test_dynamic_rope_is_refused():
    loaded = load_model(None, device=torch.device("cpu"), dtype=torch.float32)
    loaded.model.config.text_config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    assert "dynamic" in unsupported_reason(loaded.model)


def test_unknown_loop_and_unknown_option_are_one_line_errors(mixed_batch):
    with pytest.raises(LlavaAccelError, match="unknown loop 'fast'; use one of lean, generate"):
        la.load_backend("cpu", loop="fast")
    with pytest.raises(LlavaAccelError, match="unknown dtype 'float7'"):
        la.load_backend("cpu", dtype="float7")
    with pytest.raises(LlavaAccelError, match=r"max_new_tokens must be a positive whole number \(1 or more\), got 0"):
        la.load_backend("cpu").generate(mixed_batch[0][:1], mixed_batch[1][:1], max_new_tokens=0)
    with pytest.raises(LlavaAccelError, match="backend 'eagle' does not take loop, quantize; it takes: .*depth"):
        la.load_backend("eagle", device="cpu", loop="lean", quantize="int8")


def test_row_split_linear_is_bit_identical_and_chosen_only_where_it_helps(monkeypatch):
    """fp32 decode GEMVs split over the threads (``RowSplitLinear``): the same bits as ``F.linear`` (split up to
    ``SPLIT_MAX_ROWS`` rows, ``F.linear`` itself beyond); picked for large fp32 weights with several threads only."""
    from functools import partial

    from llava_accel.lean import layer
    from llava_accel.lean.layer import SPLIT_MIN_ELEMENTS, RowSplitLinear, projection

    torch.manual_seed(0)
    weight = torch.randn(4096, 512) * 0.05  # 2M elements
    for max_rows in (1, 4):
        monkeypatch.setattr(layer, "SPLIT_MAX_ROWS", max_rows)
        for parts in (2, 4):
            split = RowSplitLinear(weight, parts)
            for shape in ((1, 512), (1, 1, 512), (4, 1, 512), (2, 3, 512), (16, 512)):
                x = torch.randn(shape)
                assert torch.equal(split(x), torch.nn.functional.linear(x, weight)), (parts, shape)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert isinstance(projection(weight), RowSplitLinear)
        assert isinstance(projection(weight.bfloat16()), partial)  # bf16 GEMVs thread already
        assert isinstance(projection(weight[:, :SPLIT_MIN_ELEMENTS // 4096 - 1]), partial)  # too small to pay
        assert isinstance(projection(weight[:4095]), partial)  # rows do not split evenly
        torch.set_num_threads(1)
        assert isinstance(projection(weight), partial)
    finally:
        torch.set_num_threads(threads)
