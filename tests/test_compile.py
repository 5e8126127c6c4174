"""``compile`` on the CPU (tiny model, fp32): same tokens as eager, static-cache decode compiled once per bucket.

One compiled backend serves the module: the first compilation costs 15-40 s on 2 cores, later calls reuse it.
"""

import pytest
import torch

import llava_accel as la
from llava_accel.backends.compile import bucket_batch, pad_rows, round_up

MAX_NEW = 10


@pytest.fixture(scope="module")
def compiled():
    return la.load_backend("compile", device="cpu", dtype="float32")


def cache_layout(backend):
    """(type, batch, length, data address) of the static cache's first layer."""
    layer = backend.cache.layers[0]
    return type(backend.cache).__name__, layer.keys.shape[0], layer.keys.shape[2], layer.keys.data_ptr()


class Recorder:
    def __init__(self):
        self.shapes = []

    def put(self, value):
        self.shapes.append(tuple(value.shape))

    def end(self):
        self.shapes.append("end")


def test_tokens_equal_eager_through_compiled_static_cache(compiled, eager_fp32, mixed_batch):
    images, prompts = mixed_batch
    got = compiled.generate(images, prompts, max_new_tokens=MAX_NEW)
    want = eager_fp32.generate(images, prompts, max_new_tokens=MAX_NEW)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert all(len(o.token_ids) > 0 for o in got)
    d = compiled.describe()
    assert d["decode_compiled"] is True and d["compile_mode"] == "default" and d["compiled_parts"] == "decode"
    kind, batch, length, _ = cache_layout(compiled)
    assert (kind, batch) == ("StaticCache", 4) and length % compiled.cache_bucket == 0
    [event] = compiled.events
    assert event.batch == 4 and event.graphs >= 1 and event.first_call_s > 0
    assert d["first_call_s"] == round(event.first_call_s, 3) and d["recompiles"] == 0
    assert compiled.stats() == {"compilations": 1, "compile_s": event.first_call_s}


def test_same_bucket_reuses_the_graph(compiled, eager_fp32, mixed_batch):
    images, prompts = mixed_batch
    compiled.generate(images, prompts, max_new_tokens=MAX_NEW)  # the bucket-4 graph exists after this
    before, layout = list(compiled.events), cache_layout(compiled)
    compiled.reset_stats()
    streamer = Recorder()
    got = compiled.generate(images[1:], prompts[1:], max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW,
                            streamer=streamer)  # 3 rows, padded to the bucket of 4
    want = eager_fp32.generate(images[1:], prompts[1:], max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert compiled.events == before and compiled.describe()["recompiles"] == 0
    assert compiled.stats() == {"compilations": 0, "compile_s": 0}
    assert cache_layout(compiled) == layout  # the same cache at the same address: CUDA graphs can replay
    assert streamer.shapes[0][0] == 3 and streamer.shapes[1:-1] == [(3,)] * MAX_NEW  # prompt, then each token
    assert streamer.shapes[-1] == "end"


def test_buckets_and_row_padding():
    assert [bucket_batch(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 9, 17)] == [1, 2, 4, 8, 8, 16, 24]
    assert bucket_batch(3, ()) == 3
    assert (round_up(130, 128), round_up(128, 128), round_up(130, 0)) == (256, 128, 130)
    inputs = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "pixel_values": torch.arange(6.0).reshape(2, 3)}
    padded = pad_rows(inputs, 4)
    assert padded["input_ids"].tolist() == [[1, 2], [3, 4], [3, 4], [3, 4]]
    assert padded["pixel_values"][3].tolist() == [3.0, 4.0, 5.0]
    assert pad_rows(inputs, 2) is inputs


def test_options_reach_model_and_bad_options_are_one_line():
    b = la.load_backend("compile", device="cpu", dtype="float32", attention="eager", mode="max-autotune",
                        fullgraph=True)
    d = b.describe()
    assert d["attention"] == "eager" and b.model.model.language_model.config._attn_implementation == "eager"
    assert b.model.model.vision_tower.config._attn_implementation == "eager"
    assert (d["compile_mode"], d["fullgraph"], d["dynamic"]) == ("max-autotune", True, False)
    assert d["decode_compiled"] is None  # known after the first call
    assert b.generation_kwargs()["compile_config"].mode == "max-autotune"
    with pytest.raises(la.LlavaAccelError, match=r"^unknown compile mode 'fast'; use one of default, "):
        la.load_backend("compile", device="cpu", mode="fast")
    with pytest.raises(la.LlavaAccelError, match=r"^unknown compile parts 'lm'"):
        la.load_backend("compile", device="cpu", parts="lm")


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-cxx")
    with pytest.raises(la.BackendUnavailableError, match=r"torch.compile needs a C\+\+ compiler on the CPU "
                                                         r"\('no-such-cxx' not found"):
        la.load_backend("compile", device="cpu")
