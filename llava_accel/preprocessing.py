"""Turning (image, prompt) pairs into model inputs, the same way for every backend.

LLaVA-1.5 was trained on the conversation format ``USER: <image>\\n{prompt} ASSISTANT:``; the processor expands
``<image>`` into one token per image feature and pads on the left so that every row's answer starts at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

CHAT_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"

ImageInput = Union[Image.Image, str, "os.PathLike[str]"]


def format_prompt(prompt: str) -> str:
    return CHAT_TEMPLATE.format(prompt=prompt)


def upright_rgb(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF Orientation tag says (a phone JPEG tagged 6 is stored on its side), in RGB.

    ``datasets``' Image feature and lmms-eval do the same (``ImageOps.exif_transpose``), so the model sees the picture
    upright, as a person does. An image without the tag, or already turned (the tag is then removed), is unchanged.
    """
    return ImageOps.exif_transpose(image).convert("RGB")


def load_image(image: ImageInput) -> Image.Image:
    """An upright RGB PIL image (``upright_rgb``) from a PIL image or a path; a one-line ``ImageError`` when it cannot
    be read."""
    if isinstance(image, Image.Image):
        return upright_rgb(image)
    path = os.fspath(image)
    if not os.path.exists(path):
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return upright_rgb(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"cannot read image {path}: {exc.__class__.__name__}; pass a PNG, JPEG or other PIL-readable file") from None


@dataclass
class EncodedBatch:
    """A processed batch and what the knobs did to it (see ``encode``)."""

    inputs: dict  # processor output: input_ids, attention_mask, pixel_values (left padded)
    truncated: list[bool]  # per sample: prompt cut to fit max_input_len
    prompts: list[str]  # per sample: the prompt as run (after any cut), before the chat template
    text_tokens: list[int]  # per sample: text tokens of the templated prompt as run (image tokens excluded)
    image_tokens: int  # image tokens per image (576 for LLaVA-1.5 at 336 px, 256 at 224 px)


def encode(processor, images: Sequence[Image.Image], prompts: Sequence[str], max_input_len: int | None = None,
           img_size: int | None = None, fields: Sequence[Mapping[str, Any] | None] | None = None) -> EncodedBatch:
    """Processor output for a left-padded batch, prompts cut to ``max_input_len`` text tokens by the rule of
    ``llava_accel.truncation`` (which needs each sample's ``fields``; without them nothing is cut) and images resized
    to ``img_size`` px (None: the processor's own size). The model must accept that size (``image_size``)."""
    from .image_size import processor_size_kwargs
    from .truncation import fit_prompt

    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    fitted = [fit_prompt(processor.tokenizer, p, f, max_input_len, image_token_id)
              for p, f in zip(prompts, fields or [None] * len(prompts))]
    processor.tokenizer.padding_side = "left"
    batch = dict(processor(images=list(images), text=[format_prompt(f.prompt) for f in fitted], padding=True,
                           return_tensors="pt", **processor_size_kwargs(img_size)))
    image_tokens = int((batch["input_ids"] == image_token_id).sum()) // max(len(fitted), 1)
    return EncodedBatch(batch, [f.cut for f in fitted], [f.prompt for f in fitted], [f.text_tokens for f in fitted],
                        image_tokens)


def encode_batch(processor, images: Sequence[Image.Image], prompts: Sequence[str], max_input_len: int | None = None,
                 img_size: int | None = None, fields: Sequence[Mapping[str, Any] | None] | None = None) -> dict:
    """Processor output for a left-padded batch (input_ids, attention_mask, pixel_values); see ``encode``."""
    return encode(processor, images, prompts, max_input_len, img_size, fields).inputs
