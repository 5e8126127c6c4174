import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from llava_accel.tasks import synthetic_samples

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


@pytest.fixture(scope="session")
def small_7b(tmp_path_factory):
    """A folder holding only a config.json: the 7B's (same vocabulary, 336-px CLIP, 576 image tokens), with 2 layers
    of width 64 in each tower, for ``no_weights``."""
    import json

    from llava_accel.models.architecture import SHIPPED_CONFIGS

    d = json.loads(SHIPPED_CONFIGS["llava-hf/llava-1.5-7b-hf"].read_text())
    d["text_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=2)
    d["vision_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    folder = tmp_path_factory.mktemp("small-7b")
    (folder / "config.json").write_text(json.dumps(d))
    return str(folder)


@pytest.fixture(scope="session")
def mixed_batch():
    """Four samples with prompts of different lengths, so the batch is really left-padded."""
    samples = (synthetic_samples("synthetic-coco", 2, seed=7) + synthetic_samples("synthetic-scienceqa", 1, seed=7)
               + synthetic_samples("synthetic-textvqa", 1, seed=7))
    return [s.image for s in samples], [s.prompt for s in samples]


@pytest.fixture(scope="session")
def eager_fp32():
    """The reference every backend's tokens are checked against: ``eager`` on the CPU in fp32, loaded once."""
    import llava_accel as la

    return la.load_backend("eager", device="cpu", dtype="float32")
