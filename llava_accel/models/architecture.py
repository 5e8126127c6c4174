"""LLaVA architectures without downloads: the real llava-1.5-7b-hf configuration ships with the package as data.

Used to build the 7B model with random weights (speed runs) or on the meta device (FLOP and parameter counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import ModelNotFoundError

CONFIG_DIR = Path(__file__).parent / "configs"
SHIPPED_CONFIGS = {"llava-hf/llava-1.5-7b-hf": CONFIG_DIR / "llava-1.5-7b-hf.json"}


def load_config(model: str):
    """A ``LlavaConfig`` from a local folder, the shipped copy of a known hub id, or the hub (if reachable)."""
    from transformers import AutoConfig, LlavaConfig

    if Path(model).is_dir():
        if not (Path(model) / "config.json").is_file():
            raise ModelNotFoundError(f"{model} has no config.json; pass a folder written by save_pretrained")
        return AutoConfig.from_pretrained(model)
    if model in SHIPPED_CONFIGS:
        return LlavaConfig(**json.loads(SHIPPED_CONFIGS[model].read_text()))
    from .loading import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(model, allow_patterns=["config.json"]))


def build_model(config, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32, seed: int = 0):
    """``LlavaForConditionalGeneration`` with random weights (or none at all, on ``meta``)."""
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype)
    return model.eval()
