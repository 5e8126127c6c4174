"""``flash`` runs only with flash-attn, a CUDA GPU (Ampere+) and fp16/bf16; anywhere else it says what is missing."""

import pytest
import torch

import llava_accel as la
from llava_accel.backends import flash
from llava_accel.backends.flash import FlashBackend

HAS_FLASH = flash.flash_attn_version() is not None
requires_flash = pytest.mark.skipif(not (HAS_FLASH and torch.cuda.is_available()), reason="needs flash-attn and CUDA")


@pytest.mark.skipif(HAS_FLASH or torch.cuda.is_available(), reason="this machine has flash-attn or CUDA")
def test_unavailable_here_with_one_line_reason():
    reason = (f"needs the flash-attn package (pip install -e '.[flash]' in a llava_accel checkout); "
              f"a CUDA GPU (torch {torch.__version__} is a CPU-only build)")
    info = {i.name: i for i in la.list_backends()}["flash"]
    assert not info.available and info.reason == reason
    with pytest.raises(la.BackendUnavailableError) as err:
        la.load_backend("flash")
    assert str(err.value) == f"backend 'flash' is not available here: {reason}"


def test_each_missing_piece_is_named(monkeypatch):
    monkeypatch.setattr(flash, "flash_attn_version", lambda: "2.8.3")  # flash-attn "installed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert FlashBackend.unavailable_reason() is None
    assert FlashBackend.unavailable_reason(dtype="bfloat16") is None
    assert FlashBackend.unavailable_reason(dtype="float32") == (
        "needs dtype float16 or bfloat16 (FlashAttention-2 has no float32 kernels)")
    assert FlashBackend.unavailable_reason(device="cpu") == (
        "needs a CUDA device (FlashAttention-2 has no 'cpu' kernels)")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert FlashBackend.unavailable_reason() == (
        "needs an Ampere or newer GPU (compute capability 8.0+, this one is 7.5)")


def test_flash_attn_4_is_not_taken_for_flash_attention_2(tmp_path, monkeypatch):
    """flash-attn-4 installs a ``flash_attn`` package (``flash_attn.cute``): an import check would call FA2
    installed, and loading would then fail inside transformers."""
    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    (tmp_path / "flash_attn_4-4.0.0.dist-info").mkdir()
    (tmp_path / "flash_attn_4-4.0.0.dist-info" / "METADATA").write_text("Name: flash-attn-4\nVersion: 4.0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert flash.flash_attn_version() is None
    assert FlashBackend.unavailable_reason().startswith("needs the flash-attn package")
    (tmp_path / "flash_attn-2.8.3.dist-info").mkdir()
    (tmp_path / "flash_attn-2.8.3.dist-info" / "METADATA").write_text("Name: flash-attn\nVersion: 2.8.3\n")
    assert flash.flash_attn_version() == "2.8.3"
    assert "flash-attn package" not in (FlashBackend.unavailable_reason() or "")


def test_flash_refuses_another_attention():
    with pytest.raises(la.LlavaAccelError, match=r"^the 'flash' backend always uses attention 'flash_attention_2', "
                                                 r"not 'sdpa'; compare attentions with the 'eager' backend"):
        FlashBackend(attention="sdpa")


@pytest.mark.skipif(HAS_FLASH, reason="flash-attn is installed here")
def test_flash_attention_without_the_package_is_one_line():
    with pytest.raises(la.LlavaAccelError, match=r"^attention 'flash_attention_2' cannot be used here: .*"
                                                 r"FlashAttention2 .*not.* installed") as err:
        la.load_backend("eager", device="cpu", dtype="float16", attention="flash_attention_2")
    assert "\n" not in str(err.value)


@requires_flash
def test_flash_reports_flash_and_agrees_with_eager_fp16(mixed_batch):
    images, prompts = mixed_batch
    b = la.load_backend("flash")
    assert b.describe()["attention"] == "flash_attention_2"
    assert b.model.model.vision_tower.config._attn_implementation == "flash_attention_2"
    got = [o.token_ids for o in b.generate(images, prompts, max_new_tokens=8)]
    want = [o.token_ids for o in la.load_backend("eager").generate(images, prompts, max_new_tokens=8)]
    assert [g[:1] for g in got] == [w[:1] for w in want]  # fp16 drift may change later tokens, not the prefill's
