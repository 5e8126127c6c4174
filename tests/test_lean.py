"""The cpu backend's own greedy loop (``llava_accel.lean.greedy``) against transformers' ``generate`` on the same
model: the same tokens in every dtype and quantisation mode, the same streamer calls, and ``generate`` kept, with its
reason, for a model the loop does not reproduce."""

import pytest
import torch

import llava_accel as la
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
def test_lean_loop_gives_generates_tokens(dtype, quantize, mixed_batch):
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


def test_unknown_loop_and_unknown_option_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown loop 'fast'; use one of lean, generate"):
        la.load_backend("cpu", loop="fast")
    with pytest.raises(LlavaAccelError, match="backend 'eagle' does not take loop, quantize; it takes: .*depth"):
        la.load_backend("eagle", device="cpu", loop="lean", quantize="int8")
