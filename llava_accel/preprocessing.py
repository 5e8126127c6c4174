"""Turning (image, prompt) pairs into model inputs, the same way for every backend.

LLaVA-1.5 was trained on the conversation format ``USER: <image>\\n{prompt} ASSISTANT:``; the processor expands
``<image>`` into one token per image feature and pads on the left so that every row's answer starts at the end.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

from PIL import Image, UnidentifiedImageError

from .errors import ImageError

CHAT_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"

ImageInput = Union[Image.Image, str, "os.PathLike[str]"]


def format_prompt(prompt: str) -> str:
    return CHAT_TEMPLATE.format(prompt=prompt)


def load_image(image: ImageInput) -> Image.Image:
    """An RGB PIL image from a PIL image or a path; a one-line ``ImageError`` when it cannot be read."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = os.fspath(image)
    if not os.path.exists(path):
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"cannot read image {path}: {exc.__class__.__name__}; pass a PNG, JPEG or other PIL-readable file") from None


def encode_batch(processor, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict:
    """Processor output for a left-padded batch (input_ids, attention_mask, pixel_values)."""
    processor.tokenizer.padding_side = "left"
    batch = processor(images=list(images), text=[format_prompt(p) for p in prompts], padding=True,
                      return_tensors="pt")
    return dict(batch)
