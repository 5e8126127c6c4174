"""``eagle`` is lossless: token for token what ``eager`` generates (same device and dtype), on every synthetic task,
at batch 1 and 4, with the dynamic tree and the chain, with forced lengths and streaming; its stats add up."""

import pytest
import torch
from transformers import DynamicCache

import llava_accel as la
from llava_accel.models.compat import cache_kwarg
from llava_accel.tasks import SYNTHETIC_TASKS, synthetic_samples

MAX_NEW = 24
SAMPLES = 16  # per task


@pytest.fixture(scope="module")
def eager():
    return la.load_backend("eager", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def eagle():
    return la.load_backend("eagle", device="cpu", dtype="float32")


def _tokens(backend, samples, batch_size, **kwargs):
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        out += [o.token_ids for o in backend.generate([s.image for s in chunk], [s.prompt for s in chunk],
                                                      max_new_tokens=MAX_NEW, **kwargs)]
    return out


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_lossless_against_eager(eager, eagle, task, batch_size):
    samples = synthetic_samples(task, SAMPLES, seed=11)
    expected = _tokens(eager, samples, batch_size)
    assert _tokens(eagle, samples, batch_size) == expected
    assert all(len(t) > 0 for t in expected)


@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_lossless_past_the_answer(eager, eagle, task):
    """Forced to MAX_NEW tokens the model continues past its answer, where its choices are far less certain (closer
    logits) and the head guesses worse: the tokens must still be eager's."""
    samples = synthetic_samples(task, 8, seed=12)
    expected = _tokens(eager, samples, 4, min_new_tokens=MAX_NEW)
    assert _tokens(eagle, samples, 4, min_new_tokens=MAX_NEW) == expected
    assert all(len(t) == MAX_NEW for t in expected)


def test_drafting_stops_at_eos_and_stays_lossless(eager):
    """The shipped head drafts a caption's EOS after a few tokens; a chain of 8 then stops drafting there instead of
    running 7 head forwards per verification, and forced past the answer (EOS forbidden) it drafts on."""
    samples = synthetic_samples("synthetic-coco", 4, seed=13)
    chain = la.load_backend("eagle", device="cpu", dtype="float32", tree="chain", depth=8)
    assert _tokens(chain, samples, 1) == _tokens(eager, samples, 1)
    stats = chain.stats()
    assert stats["head_forwards"] < 5 * stats["verify_forwards"]  # 7 rounds + 1 feed each without the stop
    chain.reset_stats()
    assert _tokens(chain, samples, 1, min_new_tokens=MAX_NEW) == _tokens(eager, samples, 1, min_new_tokens=MAX_NEW)
    assert chain.stats()["head_forwards"] >= 7 * chain.stats()["verify_forwards"]


def test_chain_and_wide_tree_are_lossless(eager, mixed_batch):
    images, prompts = mixed_batch
    expected = [o.token_ids for o in eager.generate(images, prompts, max_new_tokens=MAX_NEW)]
    for options in ({"tree": "chain", "depth": 3}, {"depth": 6, "top_k": 8, "total_tokens": 40},
                    {"depth": 1, "top_k": 2, "total_tokens": 2}):
        backend = la.load_backend("eagle", device="cpu", dtype="float32", **options)
        assert [o.token_ids for o in backend.generate(images, prompts, max_new_tokens=MAX_NEW)] == expected, options


def test_forced_length_is_lossless(eager, eagle, mixed_batch):
    images, prompts = mixed_batch
    expected = [o.token_ids for o in eager.generate(images, prompts, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW)]
    got = eagle.generate(images, prompts, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW)
    assert [o.token_ids for o in got] == expected and all(len(o.token_ids) == MAX_NEW for o in got)


def test_stats_add_up(eagle, mixed_batch):
    images, prompts = mixed_batch
    eagle.reset_stats()
    outs = eagle.generate(images, prompts, max_new_tokens=MAX_NEW)
    s = eagle.stats()
    kept = sum(len(o.token_ids) + (len(o.token_ids) < MAX_NEW) for o in outs)  # + the EOS, where one came
    assert s["sequences"] == 4 and s["prefill_forwards"] == 1 and s["target_forwards"] == 1 + s["verify_forwards"]
    assert s["new_tokens"] == kept
    # every token after each row's first comes from a verification step
    assert s["accepted_tokens"] == s["new_tokens"] - 4
    assert s["mean_acceptance_length"] == pytest.approx(s["accepted_tokens"] / s["active_row_steps"], abs=1e-4)
    assert 1.0 <= s["mean_acceptance_length"] <= eagle.tree.depth + 1
    assert s["draft_s"] > 0 and s["verify_s"] > 0 and s["prefill_s"] > 0
    eagle.reset_stats()
    assert eagle.stats()["verify_forwards"] == 0


def test_streamer_gets_prompt_then_every_column(eagle, mixed_batch):
    images, prompts = mixed_batch

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value)

        def end(self):
            self.ended = True

    rec = Recorder()
    inputs = eagle.prepare(images, prompts)
    with torch.inference_mode():
        ids = eagle.generate_ids(inputs, MAX_NEW, streamer=rec)
    assert rec.ended and torch.equal(rec.puts[0], inputs["input_ids"])
    assert torch.equal(torch.stack(rec.puts[1:], 1), ids)


def test_kv_compaction_equals_plain_decode_cache(eagle, mixed_batch):
    """After generation, each row's valid target KV entries equal the cache a plain one-token-at-a-time decode of
    the same tokens builds (the newest token is not in the cache yet)."""
    images, prompts = mixed_batch
    inputs = eagle.prepare(images[:2], prompts[:2])
    with torch.inference_mode():
        ids = eagle.generate_ids(inputs, MAX_NEW, min_new_tokens=MAX_NEW)
    cache = eagle.decoder.caches[0]
    model = eagle.model
    for b in range(2):
        real = inputs["attention_mask"][b].bool()
        row = {"input_ids": inputs["input_ids"][b:b + 1, real], "pixel_values": inputs["pixel_values"][b:b + 1],
               "attention_mask": torch.ones(1, int(real.sum()), dtype=torch.long)}
        plain = DynamicCache(config=model.config.text_config)
        with torch.inference_mode():
            model(**row, **{cache_kwarg(model): plain}, use_cache=True)
            for t in ids[b, :-1].tolist():
                model(input_ids=torch.tensor([[t]]), **{cache_kwarg(model): plain}, use_cache=True)
        # the last step may have accepted tokens past max_new_tokens: their entries are valid too, but not compared
        start, end = int(cache.start[b]), int(cache.start[b]) + row["input_ids"].shape[1] + MAX_NEW - 1
        assert int(cache.lens[b]) >= end
        for i, layer in enumerate(plain.layers):
            torch.testing.assert_close(cache.keys[i, b, :, start:end], layer.keys[0], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(cache.values[i, b, :, start:end], layer.values[0], atol=2e-5, rtol=1e-4)


def test_describe_names_head_and_tree(eagle):
    d = eagle.describe()
    assert d["backend"] == "eagle" and d["head"].endswith("default_head") and d["tree"]["depth"] >= 1
    assert d["device"] == "cpu" and d["dtype"] == "float32"


def test_bad_tree_options_are_errors():
    with pytest.raises(ValueError, match="unknown draft tree"):
        la.load_backend("eagle", device="cpu", tree="bush")
    with pytest.raises(ValueError, match="total_tokens"):
        la.load_backend("eagle", device="cpu", depth=2, top_k=2, total_tokens=50)


def test_measure_records_backend_stats_of_timed_batches_only(eagle):
    from llava_accel.measure import measure

    result = measure(eagle, "synthetic-coco", batch_size=2, limit=4, max_new_tokens=8, warmup=1, count_flops=False,
                     idle_seconds=0)
    stats = result.backend_stats
    assert stats["sequences"] == 4 and stats["prefill_forwards"] == 2  # the warm-up batch is not counted
    assert stats["mean_acceptance_length"] >= 1 and stats["target_forwards"] > 2
    assert "backend: mean_acceptance_length" in str(result)
    assert type(result).from_dict(result.to_dict()).backend_stats == stats


def test_cpu_default_dtype_is_the_cpu_backends():
    from llava_accel.backends.base import resolve_dtype
    from llava_accel.backends.cpu import CpuBackend

    assert la.load_backend("eagle", device="cpu").dtype == resolve_dtype(CpuBackend.default_dtype)
    assert la.load_backend("eagle", device="cpu", dtype="float16").dtype == torch.float16
