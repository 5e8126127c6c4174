"""``img_size``: the side images are resized to before the vision tower, and what it does to the image tokens.

LLaVA-1.5's processor resizes (shortest edge) and centre-crops every image to the vision tower's native side (336 px
for the 7B model: 24 x 24 patches of 14 px = 576 image tokens). Another side only reaches the model if the tower
interpolates its position embeddings, which CLIP can (``interpolate_pos_encoding``): 224 px gives 16 x 16 = 256
image tokens. transformers 5.24 forwards that flag from ``generate`` to the tower but 5.17 does not, so we set it
with a forward pre-hook on the vision embeddings, active only for inputs whose side differs from the native one.
"""

from __future__ import annotations

from typing import Any

from .errors import LlavaAccelError


def native_image_size(config) -> int:
    """The side (px) the model's vision tower was trained on."""
    return int(config.vision_config.image_size)


def processor_size_kwargs(img_size: int | None) -> dict[str, Any]:
    """Processor arguments that resize (shortest edge) and centre-crop to ``img_size``, as LLaVA-1.5 does at 336."""
    if img_size is None:
        return {}
    if img_size < 1:
        raise LlavaAccelError(f"img_size must be a positive number of pixels, not {img_size}")
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
