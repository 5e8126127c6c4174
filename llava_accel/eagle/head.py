"""The EAGLE-1 draft head: one Llama decoder layer that predicts the target's next last-layer feature.

Input at position t: [embedding of token t+1, target feature f_t] (2h) -> Linear(2h, h) -> one Llama decoder layer
(without its input norm, as in the reference) -> predicted f_{t+1}. Token logits come from the target's own LM head,
and "embedding" is the target's input embedding (at image positions: the projected image feature), so the head
adds no vocabulary-sized weights and sees the image through the target's features.

A saved head is a folder: ``model.safetensors`` (fc + layer) and ``eagle_head.json`` (a ``HeadConfig`` naming the
target it was trained for and a fingerprint of that target's LM head, checked when the head is loaded).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LlavaAccelError
from ..lean.layer import LayerWeights, decoder_layer, layer_weights, rope

CONFIG_FILE = "eagle_head.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_HEAD = str(Path(__file__).parent / "default_head")
FINGERPRINT_SIZE = (8, 4)  # LM-head rows x columns sampled to recognise the target
TRAIN_HINT = "train one with `llava-accel eagle-train --model {model} --task synthetic-coco --out DIR` and pass head=DIR"


class HeadError(LlavaAccelError):
    """A head is missing, unreadable, or was trained for another target."""


@dataclass
class HeadConfig:
    target: str  # the model the head was trained for (hub id or folder name), for messages
    fingerprint: list[float]  # LM-head weights of that target at fixed places: recognises it wherever it lives
    hidden_size: int
    vocab_size: int
    training: dict[str, Any] = field(default_factory=dict)  # how it was trained (data, steps, losses)


def target_name(model_id: str) -> str:
    path = Path(model_id)
    return path.name if path.is_dir() else model_id


def fingerprint(lm_head: nn.Module) -> list[float]:
    """A few LM-head weights at evenly spread places: equal (to rounding) for the same model in any dtype."""
    weight = lm_head.weight.detach()
    rows = torch.linspace(0, weight.shape[0] - 1, FINGERPRINT_SIZE[0]).long().to(weight.device)
    cols = torch.linspace(0, weight.shape[1] - 1, FINGERPRINT_SIZE[1]).long().to(weight.device)
    return [round(v, 6) for v in weight[rows][:, cols].float().flatten().tolist()]


class EagleHead(nn.Module):
    def __init__(self, text_config: Any) -> None:
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        super().__init__()
        if getattr(text_config, "model_type", None) != "llama":
            raise HeadError(f"the EAGLE head needs a Llama text model, not '{text_config.model_type}'")
        config = copy.deepcopy(text_config)
        config.num_hidden_layers = 1
        hidden = config.hidden_size
        self.config = config
        self.fc = nn.Linear(2 * hidden, hidden)
        self.layer = LlamaDecoderLayer(config, layer_idx=0)
        self.layer.input_layernorm = nn.Identity()
        self.rotary = LlamaRotaryEmbedding(config)

    def forward(self, embeds: torch.Tensor, features: torch.Tensor, position_ids: torch.Tensor,
                allowed: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """Predicted next features (batch, seq, h); ``allowed`` (batch, seq, keys) says what each query may see."""
        return self.step(embeds, features, rope(self.rotary, embeds, position_ids), allowed[:, None], cache,
                         layer_weights(self.layer, fuse=False))

    def step(self, embeds: torch.Tensor, features: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
             mask: torch.Tensor, cache: Any, weights: LayerWeights) -> torch.Tensor:
        """``forward`` with rope, mask and layer weights prepared by the caller (the decoding loop's fast path)."""
        x = F.linear(torch.cat([embeds, features], dim=-1), self.fc.weight, self.fc.bias)
        return decoder_layer(weights, x, cos_sin, mask, cache)


def new_head(model: Any, seed: int = 0) -> EagleHead:
    """A randomly initialised head for ``model`` (a LlavaForConditionalGeneration), on its device and dtype."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = EagleHead(model.config.text_config)
    return head.to(device=model.lm_head.weight.device, dtype=model.lm_head.weight.dtype).eval()


def random_head(model: Any, model_id: str, seed: int = 0) -> tuple[EagleHead, HeadConfig]:
    """A seeded random head for ``model``: it drafts almost nothing the target accepts, so it measures the cost of
    speculation and its losslessness (e.g. at full size with ``no_weights``), never a speed-up."""
    text = model.config.text_config
    config = HeadConfig(target_name(model_id), fingerprint(model.lm_head), text.hidden_size, text.vocab_size,
                        {"random": True, "seed": seed})
    return new_head(model, seed), config


def save_head(head: EagleHead, config: HeadConfig, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    return out


def read_config(path: str | Path) -> HeadConfig:
    file = Path(path) / CONFIG_FILE
    if not file.exists():
        raise HeadError(f"no EAGLE head at {path} (no {CONFIG_FILE}); pass a folder written by eagle-train")
    return HeadConfig(**json.loads(file.read_text()))


def check_target(config: HeadConfig, model: Any, model_id: str, path: str | Path) -> None:
    """One-line error unless the head at ``path`` was trained for ``model``."""
    text = model.config.text_config
    same_shape = (config.hidden_size, config.vocab_size) == (text.hidden_size, text.vocab_size)
    saved, actual = torch.tensor(config.fingerprint), torch.tensor(fingerprint(model.lm_head))
    # tolerance: bf16/fp16 rounding of the same weights, far below the spread of two different models' weights
    if same_shape and torch.allclose(saved, actual, rtol=1e-2, atol=1e-2 * float(saved.abs().max())):
        return
    raise HeadError(f"the EAGLE head at {path} was trained for '{config.target}' (hidden {config.hidden_size}, "
                    f"vocab {config.vocab_size}), not for '{target_name(model_id)}' (hidden {text.hidden_size}, "
                    f"vocab {text.vocab_size}); " + TRAIN_HINT.format(model=model_id))


def load_head(path: str | Path, model: Any, model_id: str) -> tuple[EagleHead, HeadConfig]:
    """The head saved at ``path``, checked against ``model`` and put on its device and dtype."""
    from safetensors.torch import load_file

    config = read_config(path)
    check_target(config, model, model_id, path)
    head = EagleHead(model.config.text_config)
    head.load_state_dict(load_file(str(Path(path) / WEIGHTS_FILE)))
    return head.to(device=model.lm_head.weight.device, dtype=model.lm_head.weight.dtype).eval(), config
