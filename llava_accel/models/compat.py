"""What differs between the transformers releases we run on (5.17, the lent GPU's image, to 5.24), in one place."""

from __future__ import annotations

import inspect
from typing import Any


def cache_kwarg(model: Any) -> str:
    """The name of the KV-cache argument of ``model``'s forward and of ``generate``: transformers 5.24 renamed
    ``past_key_values`` to ``cache``; 5.17 has only the old name (and silently swallows the new one)."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned: ``out.cache`` in transformers 5.24, ``out.past_key_values`` before."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)
