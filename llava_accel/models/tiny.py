"""A tiny LLaVA (CLIP vision tower + projector + Llama text model) built offline, with its own tokenizer.

It is saved with ``save_pretrained`` and loaded back through the same code path as the real model, so every test
that runs on it exercises the real loading, processor and generation code. Known traps of transformers 5.x handled
here: the processor needs ``patch_size`` and ``num_additional_image_tokens=1`` (CLIP's CLS token), a byte-level
BPE must be wrapped as ``PreTrainedTokenizerFast`` (``LlamaTokenizerFast`` rebuilds it differently on reload), and
the model's vocabulary must equal ``len(tokenizer)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch

from .loading import MARKER
from ..preprocessing import format_prompt

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]


@dataclass
class TinySpec:
    """Sizes of the tiny model. The image side and patch give (side / patch)^2 image tokens.

    The defaults are the shipped default model's: a deep, narrow text model (8 layers, so that a 1-layer EAGLE
    draft head is cheap relative to a decode step) and 16 image tokens (cheap to train on 2 CPU cores).
    """

    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 8
    text_heads: int = 4
    intermediate_ratio: int = 2
    vocab_size: int = 600
    max_positions: int = 512
    # initializer_range of text model, vision tower and projector: at transformers' 0.02 a model this narrow never
    # started to use the image in 200 steps; at 0.1 it read words after ~100 (both measured on 2 CPU cores)
    init_std: float = 0.1


def default_corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: prompts (in the chat template) and answers of the synthetic tasks."""
    from ..tasks import SYNTHETIC_TASKS, synthetic_samples

    lines = []
    for task in SYNTHETIC_TASKS:
        for s in synthetic_samples(task, n, seed=seed):
            lines.append(format_prompt(s.prompt) + " " + s.references[0])
            lines.extend(s.references)
    return lines


def build_tokenizer(corpus: Iterable[str], vocab_size: int):
    """Byte-level BPE trained on ``corpus``, wrapped for transformers, BOS added, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left")


def build_processor(tokenizer, spec: TinySpec):
    from transformers import CLIPImageProcessor, LlavaProcessor

    side = spec.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def tiny_config(spec: TinySpec, tokenizer):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=spec.vision_hidden * spec.intermediate_ratio,
                              num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                              image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.vision_hidden,
                              initializer_range=spec.init_std)
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in
           (("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>"))}
    text = LlamaConfig(hidden_size=spec.text_hidden, intermediate_size=spec.text_hidden * spec.intermediate_ratio,
                       num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
                       num_key_value_heads=spec.text_heads, vocab_size=len(tokenizer),
                       max_position_embeddings=spec.max_positions, tie_word_embeddings=False,
                       initializer_range=spec.init_std, **ids)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                       projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-2,
                       tie_word_embeddings=False, **ids)


def build_tiny_llava(out_dir: str | Path, spec: TinySpec | None = None, seed: int = 0,
                     corpus: Iterable[str] | None = None, dtype: torch.dtype = torch.float32):
    """Build a randomly initialised tiny LLaVA with tokenizer and processor, save it to ``out_dir``, return the model."""
    from .architecture import build_model

    spec = spec or TinySpec()
    tokenizer = build_tokenizer(corpus if corpus is not None else default_corpus(seed=seed), spec.vocab_size)
    processor = build_processor(tokenizer, spec)
    model = build_model(tiny_config(spec, tokenizer), device="cpu", dtype=dtype, seed=seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_tiny(out_dir, model, processor, {"weights": "tiny-random", "seed": seed, "spec": asdict(spec)})
    return model


def save_tiny(out_dir: str | Path, model, processor, card: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / MARKER).write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":  # python -m llava_accel.models.tiny OUT_DIR
    import sys

    build_tiny_llava(sys.argv[1] if len(sys.argv) > 1 else "tiny-llava")
