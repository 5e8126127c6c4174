"""Backends are found through entry points, built-ins and plugins alike; errors are one line."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llava_accel as la

ROOT = Path(__file__).resolve().parents[1]


def test_builtins_listed_with_reasons():
    infos = {i.name: i for i in la.list_backends()}
    assert {"eager", "cpu"} <= set(infos)
    assert infos["cpu"].available and infos["cpu"].reason is None and infos["cpu"].package == "llava-accel"
    assert infos["eager"].available == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in infos["eager"].reason


def test_listing_imports_no_heavy_module():
    code = ("import sys, llava_accel as la; la.list_backends(); "
            "heavy = [m for m in ('transformers', 'flash_attn', 'datasets') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_backend_lists_known_ones():
    with pytest.raises(la.UnknownBackendError) as err:
        la.load_backend("warp-drive")
    assert str(err.value).startswith("unknown backend 'warp-drive'; known backends: ")
    assert "cpu" in str(err.value) and "eager" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="eager is available on a machine with CUDA")
def test_unavailable_backend_says_why_and_what_to_do():
    with pytest.raises(la.BackendUnavailableError) as err:
        la.load_backend("eager")
    msg = str(err.value)
    assert msg.startswith("backend 'eager' is not available here: needs a CUDA GPU")
    assert "device='cpu'" in msg and "'cpu' backend" in msg and "\n" not in msg


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """pip-install examples/plugin_backend into a private folder and put it on sys.path, as an install would."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT / "examples" / "plugin_backend")], check=True)
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))


def test_plugin_is_found_and_matches_eager(installed_plugin, mixed_batch):
    infos = {i.name: i for i in la.list_backends()}
    assert infos["manual-loop"].available and infos["manual-loop"].package == "llava-accel-manual-loop"
    plugin = la.load_backend("manual-loop")
    assert plugin.describe()["backend"] == "manual-loop"
    images, prompts = mixed_batch
    eager = la.load_backend("eager", device="cpu", dtype="float32")
    for min_new in (None, 8):
        got = plugin.generate(images, prompts, max_new_tokens=8, min_new_tokens=min_new)
        want = eager.generate(images, prompts, max_new_tokens=8, min_new_tokens=min_new)
        assert [o.token_ids for o in got] == [o.token_ids for o in want]
