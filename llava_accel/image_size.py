"""``img_size``: the side images are resized to before the vision tower, and what it does to the image tokens.

LLaVA-1.5's processor resizes (shortest edge) and centre-crops every image to the vision tower's native side (336 px
for the 7B model: 24 x 24 patches of 14 px = 576 image tokens). Another side only reaches the model if the tower
interpolates its position embeddings, which CLIP can (``interpolate_pos_encoding``): 224 px gives 16 x 16 = 256
image tokens. transformers 5.24 forwards that flag from ``generate`` to the tower but 5.17 does not, so we set it
with a forward pre-hook on the vision embeddings, active only for inputs whose side differs from the native one.
"""

from __future__ import annotations

import math
from typing import Any

from .checks import positive_int
from .errors import LlavaAccelError, OptionError


def native_image_size(config) -> int:
    """The side (px) the model's vision tower was trained on."""
    return int(config.vision_config.image_size)


def context_length(config) -> int:
    """Positions the language model takes (``max_position_embeddings``): image tokens, prompt and answer together."""
    return int(config.text_config.max_position_embeddings)


def image_tokens(config, image_size: int | None = None) -> int:
    """Image tokens per image (CLS dropped by the 'default' feature strategy); default: the configured size."""
    v = config.vision_config
    return ((image_size or v.image_size) // v.patch_size) ** 2 + (config.vision_feature_select_strategy == "full")


def image_size_limits(config) -> tuple[int, int]:
    """The smallest and largest ``img_size`` the model can take: one patch of the vision tower, and the largest side
    whose image tokens leave at least one position of the language model's context for the prompt."""
    patch = int(config.vision_config.patch_size)
    room = context_length(config) - 1 - (config.vision_feature_select_strategy == "full")  # positions for patches
    return patch, (math.isqrt(max(room, 1)) + 1) * patch - 1


def check_img_size(config, img_size: int | None) -> int | None:
    """``img_size`` if the model can take it (None: the native size), else a one-line ``OptionError`` with the range:
    a side below one patch has no patch to embed, and one above the limit asks for more image tokens than the
    language model has positions (its cost grows with the square of the side, so it would also run for hours)."""
    if img_size is None:
        return None
    positive_int(img_size, "img_size")
    low, high = image_size_limits(config)
    if img_size < low:
        raise OptionError(f"img_size={img_size} is smaller than one {low}-px patch of the vision tower; use "
                          f"{low} to {high} px")
    if img_size > high:
        raise OptionError(f"img_size={img_size} gives {image_tokens(config, img_size):,} image tokens, more than the "
                          f"language model's context of {context_length(config)} positions (max_position_embeddings) "
                          f"holds with a prompt; use {low} to {high} px")
    return img_size


def processor_size_kwargs(img_size: int | None) -> dict[str, Any]:
    """Processor arguments that resize (shortest edge) and centre-crop to ``img_size``, as LLaVA-1.5 does at 336."""
    if img_size is None:
        return {}
    positive_int(img_size, "img_size")
    return {"size": {"shortest_edge": img_size}, "crop_size": {"height": img_size, "width": img_size}}


def _interpolate_when_resized(module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    pixel_values = args[0] if args else kwargs["pixel_values"]
    if tuple(pixel_values.shape[-2:]) != (module.image_size, module.image_size):
        if len(args) > 1:
            args = (args[0], True, *args[2:])
        else:
            kwargs["interpolate_pos_encoding"] = True
    return args, kwargs


def enable_any_image_size(model) -> None:
    """Let ``model``'s vision tower take any image side by interpolating its position embeddings (idempotent)."""
    embeddings = next((m for m in model.modules() if callable(getattr(m, "interpolate_pos_encoding", None))
                       and hasattr(m, "image_size")), None)
    if embeddings is None:
        raise LlavaAccelError(f"the vision tower of {type(model).__name__} cannot interpolate its position "
                              "embeddings; leave img_size at the model's native size")
    if not getattr(embeddings, "_llava_accel_any_size", False):
        embeddings.register_forward_pre_hook(_interpolate_when_resized, with_kwargs=True)
        embeddings._llava_accel_any_size = True
