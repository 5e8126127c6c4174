"""The reference study's knobs: max_input_len (a written truncation rule) and img_size (image tokens)."""

from pathlib import Path

import pytest
import torch

import llava_accel as la
from llava_accel.errors import PromptTooLongError
from llava_accel.image_size import enable_any_image_size
from llava_accel.metrics.flops import image_tokens
from llava_accel.preprocessing import encode
from llava_accel.tasks import load_task
from llava_accel.tasks.prompts import CHOICE_INSTRUCTION, VQA_INSTRUCTION
from llava_accel.truncation import count_text_tokens, fit_prompt

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def backend():
    return la.load_backend("cpu", dtype="float32")


@pytest.fixture(scope="module")
def tok(backend):
    return backend.processor.tokenizer


@pytest.fixture(scope="module")
def image_id(backend):
    return backend.processor.tokenizer.convert_tokens_to_ids(backend.processor.image_token)


@pytest.fixture(scope="module")
def sqa():
    return load_task("scienceqa", source=FIXTURES / "scienceqa" / "folder")[2]  # the longest hint


def test_prompt_within_the_cap_is_untouched(tok, sqa, image_id):
    n = count_text_tokens(tok, sqa.prompt, image_id)
    fitted = fit_prompt(tok, sqa.prompt, sqa.fields, n, image_id)
    assert (fitted.prompt, fitted.cut, fitted.text_tokens) == (sqa.prompt, False, n)
    assert fit_prompt(tok, sqa.prompt, sqa.fields, None, image_id).cut is False


def test_hint_is_cut_first_then_the_question(tok, sqa, image_id):
    n = count_text_tokens(tok, sqa.prompt, image_id)
    hint, question = sqa.fields["hint"], sqa.fields["question"]
    options = "A. yellow\nB. red\nC. purple\nD. blue"
    # a few tokens over: only the hint's tail goes
    short = fit_prompt(tok, sqa.prompt, sqa.fields, n - 5, image_id)
    assert short.cut and short.text_tokens <= n - 5
    kept_hint = short.prompt.split("\n")[0].removeprefix("Context: ")
    assert hint.startswith(kept_hint) and len(kept_hint) < len(hint)
    assert short.prompt.endswith(f"\n{question}\n{options}{CHOICE_INSTRUCTION}")
    # without the hint line, minus a few: the whole "Context:" line is gone and the question loses its tail
    no_hint = count_text_tokens(tok, f"{question}\n{options}{CHOICE_INSTRUCTION}", image_id)
    cut = fit_prompt(tok, sqa.prompt, sqa.fields, no_hint - 3, image_id)
    assert cut.cut and cut.text_tokens <= no_hint - 3 and "Context:" not in cut.prompt
    head = cut.prompt.split("\n")[0]
    assert question.startswith(head) and len(head) < len(question)
    assert cut.prompt.endswith(f"\n{options}{CHOICE_INSTRUCTION}")


def test_instruction_and_template_are_never_cut(tok, image_id):
    textvqa = load_task("textvqa", source=FIXTURES / "textvqa" / "folder")[0]
    floor = count_text_tokens(tok, VQA_INSTRUCTION, image_id)  # template + instruction, empty question
    fitted = fit_prompt(tok, textvqa.prompt, textvqa.fields, floor + 1, image_id)
    assert fitted.cut and fitted.prompt.endswith(VQA_INSTRUCTION) and fitted.text_tokens <= floor + 1
    with pytest.raises(PromptTooLongError, match=f"use max_input_len >= {floor}"):
        fit_prompt(tok, textvqa.prompt, textvqa.fields, floor - 1, image_id)
    coco = load_task("coco", source=FIXTURES / "coco" / "folder")[0]  # no fields: the whole prompt is instruction
    n = count_text_tokens(tok, coco.prompt, image_id)
    with pytest.raises(PromptTooLongError):
        fit_prompt(tok, coco.prompt, coco.fields, n - 1, image_id)


def test_generate_reports_cut_samples_and_token_counts(backend, image_id):
    samples = load_task("scienceqa", source=FIXTURES / "scienceqa" / "folder")
    lengths = [count_text_tokens(backend.processor.tokenizer, s.prompt, image_id) for s in samples]
    cap = sorted(lengths)[1]  # two samples fit, two are cut
    args = [s.image for s in samples], [s.prompt for s in samples]
    outs = backend.generate(*args, max_new_tokens=3, max_input_len=cap, fields=[s.fields for s in samples])
    assert [o.truncated for o in outs] == [n > cap for n in lengths] and sum(o.truncated for o in outs) == 2
    assert all(o.text_tokens <= cap for o in outs) and all(o.image_tokens == 16 for o in outs)
    # each output holds the prompt as run: the cut one, or the prompt given
    assert [o.prompt == s.prompt for o, s in zip(outs, samples)] == [n <= cap for n in lengths]
    assert all(count_text_tokens(backend.processor.tokenizer, o.prompt, image_id) == o.text_tokens for o in outs)
    batch = backend.encode(*args, max_input_len=cap, fields=[s.fields for s in samples])
    mask = batch.inputs["attention_mask"].sum(1)
    assert (mask - batch.image_tokens).tolist() == batch.text_tokens  # counted as the model sees them
    # no cap: nothing cut, the same inputs as before the knob existed
    plain = backend.generate(*args, max_new_tokens=3)
    assert not any(o.truncated for o in plain) and [o.text_tokens for o in plain] == lengths
    assert torch.equal(backend.prepare(*args)["input_ids"], encode(backend.processor, *args).inputs["input_ids"])


def test_img_size_changes_the_image_tokens(backend, mixed_batch):
    images, prompts = mixed_batch
    native = backend.encode(images[:2], prompts[:2])
    assert native.image_tokens == 16 and native.inputs["pixel_values"].shape[-1] == 64  # tiny model: 64 px, patch 16
    small = backend.generate(images[:2], prompts[:2], max_new_tokens=4, img_size=32)
    assert [o.image_tokens for o in small] == [4, 4]  # (32 / 16)^2
    assert backend.encode(images[:1], prompts[:1], img_size=32).inputs["pixel_values"].shape[-2:] == (32, 32)
    # at the native size the interpolation hook changes nothing
    assert [o.token_ids for o in backend.generate(images[:2], prompts[:2], max_new_tokens=4, img_size=64)] == \
           [o.token_ids for o in backend.generate(images[:2], prompts[:2], max_new_tokens=4)]


def test_img_size_224_gives_256_image_tokens_on_the_7b_architecture():
    from llava_accel.models.architecture import build_model, load_config

    config = load_config("llava-hf/llava-1.5-7b-hf")
    assert (image_tokens(config), image_tokens(config, 224)) == (576, 256)
    model = build_model(config, device="meta")
    select = dict(vision_feature_layer=config.vision_feature_layer,
                  vision_feature_select_strategy=config.vision_feature_select_strategy)

    def features(side):
        with torch.no_grad():
            out = model.model.get_image_features(pixel_values=torch.empty(1, 3, side, side, device="meta"), **select)
        return torch.cat(list(getattr(out, "pooler_output", out)), dim=0).shape

    assert features(336) == (576, 4096)
    with pytest.raises(ValueError, match="doesn't match model"):  # without interpolation 224 px cannot run
        features(224)
    enable_any_image_size(model)
    assert features(224) == (256, 4096) and features(336) == (576, 4096)


def test_measure_reports_cut_prompts_image_tokens_and_skipped_images(backend, image_id, tmp_path):
    import shutil

    folder = Path(shutil.copytree(FIXTURES / "scienceqa" / "folder", tmp_path / "sqa"))
    (folder / "images" / "0.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        samples = load_task("scienceqa", source=folder)
    lengths = [count_text_tokens(backend.processor.tokenizer, s.prompt, image_id) for s in samples]
    cap = sorted(lengths)[0]  # the shortest fits, the other two are cut
    m = la.measure(backend, samples, max_input_len=cap, img_size=32, max_new_tokens=2, warmup=0, idle_seconds=0)
    assert m.config["truncated_samples"] == sum(n > cap for n in lengths) == 2
    # each prediction records the prompt the model saw, and the sample's own prompt beside it when that was cut
    for p, s, n in zip(m.predictions, samples, lengths):
        assert (p.original_prompt, p.prompt == s.prompt) == ((None, True) if n <= cap else (s.prompt, False))
        assert count_text_tokens(backend.processor.tokenizer, p.prompt, image_id) <= cap
    assert la.MeasureResult.from_dict(m.to_dict()).predictions == m.predictions
    assert m.config["image_tokens"] == 4 and m.config["img_size"] == 32
    assert len(m.config["skipped_samples"]) == 1 and m.flops is not None  # the FLOP pass ran at 32 px too
    table = str(m)
    assert "2 prompts cut" in table and "4 image tokens per image" in table and "1 samples skipped" in table
    plain = la.measure(backend, samples, max_new_tokens=2, warmup=0, idle_seconds=0, count_flops=False)
    assert plain.config["truncated_samples"] == 0 and plain.config["max_input_len"] is None  # no cut by default
    assert [(p.prompt, p.original_prompt) for p in plain.predictions] == [(s.prompt, None) for s in samples]
