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

IMAGE_PLACEHOLDER = "<image>"
CHAT_TEMPLATE = "USER: " + IMAGE_PLACEHOLDER + "\n{prompt} ASSISTANT:"

ImageInput = Union[Image.Image, str, "os.PathLike[str]"]


def format_prompt(prompt: str) -> str:
    return CHAT_TEMPLATE.format(prompt=prompt)


def upright_rgb(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF Orientation tag says (a phone JPEG tagged 6 is stored on its side), in RGB.

    ``datasets``' Image feature and lmms-eval do the same (``ImageOps.exif_transpose``), so the model sees the picture
    upright, as a person does. An image without the tag, or already turned (the tag is then removed), is unchanged;
    then ``to_rgb`` (high-depth pixels scaled, not clipped).
    """
    return to_rgb(ImageOps.exif_transpose(image))


def load_image(image: ImageInput) -> Image.Image:
    """An upright 8-bit RGB PIL image (``upright_rgb``) from a PIL image or a path; a one-line ``ImageError`` when it
    cannot be read."""
    if isinstance(image, Image.Image):
        return upright_rgb(image)
    if not isinstance(image, (str, os.PathLike)):
        raise ImageError(f"an image must be a PIL image or a file path, got {type(image).__name__}")
    path = os.fspath(image)
    if not os.path.exists(path):
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            return upright_rgb(img)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image {path} is too large to decode safely ({exc}); resize it") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"cannot read image {path}: {exc.__class__.__name__}; pass a PNG, JPEG or other PIL-readable file") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, scaling high-depth pixels into 0-255 (PIL's ``convert`` clips them: a 16-bit PNG turns white and
    a 0-1 float TIFF black). 16-bit integers are divided by 257 (65535 -> 255). 32-bit integers are read as 8-bit
    when they fit in 0-255, else as 16-bit when they fit in 0-65535; floats as 0-1 when they fit there, else as 0-255
    when they fit there; anything else (and NaN as 0) is stretched from its minimum to its maximum."""
    sixteen_bit = image.mode.startswith("I;16")
    if sixteen_bit:
        image = image.convert("I")
    if image.mode not in ("I", "F"):
        return image.convert("RGB")
    import numpy as np

    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode == "I" and low >= 0 and high <= 255 and not sixteen_bit:
        scale, offset = 1.0, 0.0
    elif image.mode == "I" and low >= 0 and high <= 65535:
        scale, offset = 255 / 65535, 0.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        scale, offset = 255.0, 0.0
    elif image.mode == "F" and low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    else:
        scale, offset = (255 / (high - low) if high > low else 0.0), low
    eight = np.clip(np.rint((pixels - offset) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(eight).convert("RGB")


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
