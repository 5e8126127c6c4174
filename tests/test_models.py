"""Model loading without a hub: the tiny builder's round trip, the shipped 7B architecture, clear errors."""

import json

import pytest
import torch

import llava_accel as la
from llava_accel.models.architecture import build_model, load_config
from llava_accel.models.loading import load_model
from llava_accel.models.tiny import TinySpec, build_tiny_llava
from llava_accel.preprocessing import encode_batch


def test_tiny_build_save_load_round_trip(tmp_path, mixed_batch):
    built = build_tiny_llava(tmp_path, TinySpec(text_layers=1, vision_layers=1), seed=3)
    loaded = load_model(str(tmp_path), torch.device("cpu"), torch.float32)
    assert loaded.weights == "tiny-random"
    assert json.loads((tmp_path / "llava_accel.json").read_text())["seed"] == 3
    images, prompts = mixed_batch
    inputs = encode_batch(loaded.processor, images, prompts)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=loaded.processor.tokenizer.pad_token_id)
    assert torch.equal(built.generate(**inputs, **kw), loaded.model.generate(**inputs, **kw))


def test_tokenizer_round_trip_is_exact(mixed_batch):
    tok = la.load_backend("cpu", dtype="float32").processor.tokenizer
    texts = list(mixed_batch[1]) + ["an orange circle and a blue triangle", "Ünïcödé, digits 0123 & symbols {}"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok("hi")["input_ids"][0] == tok.bos_token_id


def test_image_tokens_match_features(mixed_batch):
    b = la.load_backend("cpu", dtype="float32")
    inputs = b.prepare(*mixed_batch)
    n_image = (inputs["input_ids"] == b.model.config.image_token_id).sum(-1)
    spec = json.loads(open(f"{la.DEFAULT_MODEL}/llava_accel.json").read())["spec"]
    assert n_image.tolist() == [(spec["image_size"] // spec["patch_size"]) ** 2] * 4
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding: every row ends with a real token


def test_7b_architecture_from_shipped_config_on_meta():
    config = load_config("llava-hf/llava-1.5-7b-hf")
    model = build_model(config, device="meta", dtype=torch.float16)
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072
    assert config.text_config.hidden_size == 4096 and config.vision_config.image_size == 336
    assert config.image_token_index == 32000 and config.vision_feature_layer == -2


def test_hub_model_offline_is_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(la.ModelNotFoundError) as err:
        load_model("someone/not-a-cached-model", torch.device("cpu"), torch.float32)
    msg = str(err.value)
    assert "not a local folder, not in the Hugging Face cache, and the hub is unreachable" in msg
    assert "--local-dir" in msg and "\n" not in msg


def test_missing_local_folder_is_one_line_error():
    with pytest.raises(la.ModelNotFoundError, match=r"model folder not found: \./no/such/model"):
        load_model("./no/such/model", torch.device("cpu"), torch.float32)
