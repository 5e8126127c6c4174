"""Loading a LLaVA model and its processor from a hub id or a local ``save_pretrained`` folder.

Safetensors only and ``trust_remote_code=False``: a model folder can never run code on the user's machine.
Without network a hub download would retry for ~30 s before failing, so we check the cache and the hub's
reachability first and fail at once with a line that says how to point at a local copy.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import LlavaAccelError, ModelNotFoundError, OptionError
from ..outputs import check_folder
from ..quiet import quiet_loading
from ..quantize import BlockQuantizer

DEFAULT_MODEL = str(Path(__file__).parent / "default")
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
MARKER = "llava_accel.json"  # written by our builders: what kind of weights a folder holds
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's big-model inference strategies


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    model_id: str
    path: str
    weights: str  # "real" (pretrained checkpoint), "tiny-random", "tiny-trained" or "random"
    init_s: float | None = None  # no_weights: seconds spent making the random weights
    init_rss_peak_bytes: int | None = None  # no_weights: the process's peak RSS once they were made (on the CPU)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    if _offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_model_path(model: str, allow_patterns: list[str] | None = None) -> str:
    """A local folder holding ``model``: the folder itself, the HF cache's snapshot, or a fresh download."""
    if Path(model).is_dir():
        return str(model)
    from huggingface_hub import snapshot_download

    patterns = allow_patterns or MODEL_FILES
    try:
        return snapshot_download(model, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    if not HUB_ID.match(model):
        raise ModelNotFoundError(f"model folder not found: {model} (nor is it a hub id like owner/name)")
    if not hub_reachable():
        raise ModelNotFoundError(
            f"model '{model}' is not a local folder, not in the Hugging Face cache, and the hub is unreachable "
            f"(offline); download it where there is network (`hf download {model} --local-dir DIR`) and pass DIR")
    try:
        return snapshot_download(model, allow_patterns=patterns)
    except Exception as exc:
        raise ModelNotFoundError(f"cannot download model '{model}': {str(exc).splitlines()[0]}") from None


def check_attention(attention: str) -> str:
    """``attention`` if transformers knows it (eager, sdpa, flash_attention_2, flex_attention, ..., or a hub kernel
    named owner/name), else a one-line ``OptionError`` listing them (transformers' own error is a traceback)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *sorted(ALL_ATTENTION_FUNCTIONS.valid_keys())]
    if attention in known or (isinstance(attention, str) and "/" in attention):
        return attention
    raise OptionError(f"unknown attention '{attention}'; use one of {', '.join(known)}")


def weights_kind(path: str, model: str) -> str:
    marker = Path(path) / MARKER
    if marker.exists():
        return json.loads(marker.read_text()).get("weights", "random")
    return "real"


def load_model(model: str | None, device: torch.device, dtype: torch.dtype, attention: str = "sdpa",
               device_map: str | None = None, max_memory: dict | None = None,
               offload_folder: str | None = None, no_weights: bool = False,
               quantizer: BlockQuantizer | None = None) -> LoadedModel:
    """Model (eval mode, on ``device`` in ``dtype``) and processor (left padding) for ``model``.

    ``device_map`` (one of ``DEVICE_MAPS``): spread the model over the GPUs, then the CPU, then ``offload_folder``
    on disk, with accelerate's big-model inference, within ``max_memory`` ({GPU index or "cpu": bytes or "8GiB"}).
    Under data parallelism each process spreads its model over its own share of the node's GPUs.
    ``no_weights``: the model's architecture with random weights, made here (see ``no_weights.py``), each block
    quantised by ``quantizer`` as it is made; no checkpoint is read, even where one is present.
    """
    from safetensors import SafetensorError
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = model or DEFAULT_MODEL
    if no_weights:
        if device_map is not None:
            raise LlavaAccelError("no_weights makes the model on one device; drop device_map")
        from .no_weights import random_model

        from ..metrics.memory import rss_peak_bytes

        net, processor, seconds = random_model(model, device, dtype, attention, quantizer=quantizer)
        return LoadedModel(net, processor, model, path="", weights="random", init_s=seconds,
                           init_rss_peak_bytes=rss_peak_bytes() if device.type == "cpu" else None)
    path = resolve_model_path(model)
    if not (Path(path) / "config.json").exists():
        raise ModelNotFoundError(f"{path} has no config.json; pass a folder written by save_pretrained")
    if device_map is None:
        placement: dict[str, Any] = {"device_map": {"": str(device)} if device.type == "cuda" else None}
    elif device_map in DEVICE_MAPS:
        if offload_folder is not None:
            check_folder(offload_folder, "offload folder")
        placement = {"device_map": device_map, "max_memory": _own_max_memory(max_memory),
                     "offload_folder": offload_folder}
    else:
        raise LlavaAccelError(f"unknown device_map '{device_map}'; use one of {', '.join(DEVICE_MAPS)}")
    try:
        with quiet_loading():
            net = LlavaForConditionalGeneration.from_pretrained(
                path, dtype=dtype, attn_implementation=attention, use_safetensors=True, trust_remote_code=False,
                **placement)
    except ImportError as exc:
        raise LlavaAccelError(f"attention '{attention}' cannot be used here: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from None
    except SafetensorError as exc:
        raise ModelNotFoundError(f"cannot load model from {path}: a weights file is corrupt or truncated "
                                 f"({str(exc).splitlines()[0]}); copy or download it again") from None
    except ValueError as exc:
        if device_map is None:
            raise
        raise LlavaAccelError(f"device_map='{device_map}' failed: {str(exc).splitlines()[0]} (the weights that fit "
                              "nowhere else go to disk: pass offload_folder, or raise max_memory)") from None
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    net = net if device_map else net.to(device)  # accelerate's hooks move each part's inputs to its device
    return LoadedModel(net.eval(), processor, model, path, weights_kind(path, model))


def _own_max_memory(max_memory: dict | None) -> dict | None:
    """Under data parallelism, ``max_memory`` limited to this process's GPUs (so processes never share one)."""
    from ..distributed import data_parallel, own_gpus

    if data_parallel() is None or not torch.cuda.is_available():
        return max_memory
    from accelerate.utils import get_max_memory

    mine = own_gpus(torch.cuda.device_count())
    torch.cuda.set_device(mine[0])
    return {k: v for k, v in get_max_memory(max_memory).items() if not isinstance(k, int) or k in mine}


def spread_devices(net: Any) -> list[torch.device]:
    """The accelerator devices of a model placed by accelerate, in the order of its map (parts offloaded to the CPU
    or disk compute on the first one, as ``accelerate.dispatch_model`` runs them)."""
    placement = getattr(net, "hf_device_map", None) or {}
    return list(dict.fromkeys(torch.device("cuda", d) if isinstance(d, int) else torch.device(d)
                              for d in placement.values() if d not in ("cpu", "disk")))


def input_device(net: Any, default: torch.device) -> torch.device:
    """Where inputs go: ``default``, or for a model placed by accelerate its main device (the CPU when no part is
    on an accelerator)."""
    if not getattr(net, "hf_device_map", None):
        return default
    return next(iter(spread_devices(net)), torch.device("cpu"))
