"""LLaVA-1.5's tokenizer and processor, offline: llama.cpp's own test vectors for LLaMA-2's vocabulary, the added
tokens, the chat template and llava-hf's CLIP preprocessing."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_accel.models.architecture import load_config
from llava_accel.models.processor import (CLIP_MEAN, CLIP_STD, TOKENIZER_FILE, convert, llava_processor,
                                          llava_tokenizer, read_test_vectors)
from llava_accel.preprocessing import format_prompt

VECTORS = Path(__file__).parent / "fixtures" / "llama_vocab"


@pytest.fixture(scope="module")
def tokenizer():
    return llava_tokenizer()


def test_llama_cpp_test_vectors_exactly(tokenizer):
    vectors = read_test_vectors(VECTORS)
    assert len(vectors) == 46 and ("", []) in vectors  # the file's own count, the empty string included
    wrong = [(text, ids) for text, ids in vectors if tokenizer.encode(text, add_special_tokens=False) != ids]
    assert wrong == []
    assert all(tokenizer.decode(ids) == text for text, ids in vectors)  # and back


def test_special_and_added_tokens(tokenizer):
    assert len(tokenizer) == 32002
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<image>", "<pad>")] == \
        [0, 1, 2, 32000, 32001]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 32001)
    ids = tokenizer("two <image> here <pad>").input_ids
    assert ids[0] == 1 and ids.count(32000) == 1 and ids.count(32001) == 1  # whole tokens, not "<", "image", ">"
    assert tokenizer.decode(ids, skip_special_tokens=True).split() == ["two", "here"]
    batch = tokenizer(["a", "a longer one"], padding=True).input_ids
    assert batch[0][0] == 32001 and batch[1][0] == 1  # left padding with <pad>


def test_chat_template_is_llava_15s(tokenizer):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is written?"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "USER: <image>\nWhat is written? ASSISTANT:" == format_prompt("What is written?")
    # SentencePiece's space before each piece of text: "<image>" then "▁" and the newline byte, as llava-hf gives
    ids = tokenizer(text).input_ids
    assert tokenizer.convert_ids_to_tokens(ids[ids.index(32000):ids.index(32000) + 3]) == ["<image>", "▁", "<0x0A>"]


def test_processor_has_llava_hf_values_and_576_image_tokens():
    processor = llava_processor(load_config("llava-hf/llava-1.5-7b-hf"))
    images = processor.image_processor
    assert images.size == {"shortest_edge": 336} and images.crop_size == {"height": 336, "width": 336}
    assert int(images.resample) == 3 and images.do_center_crop and images.do_normalize
    assert list(images.image_mean) == CLIP_MEAN and list(images.image_std) == CLIP_STD
    wide = np.zeros((300, 900, 3), np.uint8)
    wide[:, 450:] = 255  # left half black, right half white: the centre crop keeps both
    out = processor(images=[Image.fromarray(wide)], text=[format_prompt("What?")], return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (1, 3, 336, 336)
    assert int((out["input_ids"] == 32000).sum()) == 576
    pixels = out["pixel_values"][0, 0]
    assert pixels[:, :100].mean() < 0 < pixels[:, -100:].mean()


@pytest.mark.skipif(not os.environ.get("LLAMA_CPP_MODELS"),
                    reason="set LLAMA_CPP_MODELS to llama.cpp's models/ folder (llama-cpp-python sdist) to rebuild "
                           "the shipped tokenizer")
def test_conversion_reproduces_the_shipped_file(tmp_path):
    pytest.importorskip("gguf", reason="the conversion reads GGUF with the gguf package")
    out = tmp_path / "tokenizer.json.gz"
    assert convert(os.environ["LLAMA_CPP_MODELS"], out) == 0
    assert out.read_bytes() == TOKENIZER_FILE.read_bytes()
