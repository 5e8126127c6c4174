"""The shipped default model: it learned the synthetic tasks, and its answers come from the image."""

import json
from pathlib import Path

import pytest
import torch

import llava_accel as la
from llava_accel.models.loading import load_model
from llava_accel.models.train_tiny import HELDOUT_SEED, TRAIN_SEED_BASE, heldout_scores, meets_targets, predict
from llava_accel.tasks import SYNTHETIC_TASKS, synthetic_samples

FRESH_SEED = 4242  # below TRAIN_SEED_BASE (never trained on) and not the model card's held-out seed
N = 40  # samples per task


@pytest.fixture(scope="module")
def default():
    return load_model(None, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def fresh(default):
    return heldout_scores(default.model, default.processor, N, seed=FRESH_SEED)


def test_default_is_the_trained_model_small_and_documented():
    folder = Path(la.DEFAULT_MODEL)
    marker = json.loads((folder / "llava_accel.json").read_text())
    assert marker["weights"] == "tiny-trained"
    assert FRESH_SEED != HELDOUT_SEED and FRESH_SEED < TRAIN_SEED_BASE
    assert sum(f.stat().st_size for f in folder.iterdir()) < 10_000_000
    card = (folder / "README.md").read_text()
    assert "python -m llava_accel.models.train_tiny" in card and f"Seed {marker['seed']}" in card
    for task in SYNTHETIC_TASKS:
        assert task in card


@pytest.mark.parametrize("task", list(SYNTHETIC_TASKS))
def test_default_meets_its_target_on_fresh_heldout_samples(fresh, task):
    assert meets_targets(fresh)[task], fresh[task]


def test_blank_images_collapse_the_scores(default, fresh):
    blank = heldout_scores(default.model, default.processor, N, seed=FRESH_SEED, blank=True)
    assert blank["synthetic-coco"]["wer"] > fresh["synthetic-coco"]["wer"] + 0.3, blank
    assert blank["synthetic-textvqa"]["vqa_accuracy"] < 0.3, blank
    assert blank["synthetic-scienceqa"]["accuracy"] < fresh["synthetic-scienceqa"]["accuracy"] - 0.4, blank
    samples = synthetic_samples("synthetic-coco", 16, seed=FRESH_SEED)
    seen = predict(default.model, default.processor, samples)
    unseen = predict(default.model, default.processor, samples, blank=True)
    assert sum(a != b for a, b in zip(seen, unseen)) >= 12  # captions follow the image, not the prompt
