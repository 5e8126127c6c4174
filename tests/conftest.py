import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from llava_accel.tasks import synthetic_samples

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")


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
