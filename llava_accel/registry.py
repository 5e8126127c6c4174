"""Backend discovery through the ``llava_accel.backends`` entry-point group.

Built-ins are registered exactly like third-party plugins (see ``pyproject.toml``), so there is one code path.
Listing imports each backend's class module, which by convention imports nothing heavy at module level
(transformers and optional packages such as flash-attn are imported when a model is loaded).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from .errors import BackendUnavailableError, LlavaAccelError, UnknownBackendError

if TYPE_CHECKING:
    from .backends.base import Backend

GROUP = "llava_accel.backends"


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str | None
    package: str


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _package_of(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ep.value.split(".")[0]


def backend_class(name: str) -> type[Backend]:
    """The class registered under ``name``; a one-line error listing the known names otherwise."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise UnknownBackendError(f"unknown backend '{name}'; known backends: {known}")
    return eps[name].load()


def list_backends() -> list[BackendInfo]:
    """Every registered backend, with whether it can run here with its default settings, and why not."""
    infos = []
    for name, ep in sorted(_entry_points().items()):
        try:
            reason = ep.load().unavailable_reason()
        except Exception as exc:  # a broken plugin must not hide the others
            reason = f"failed to import {ep.value}: {type(exc).__name__}: {exc}"
        infos.append(BackendInfo(name, reason is None, reason, _package_of(ep)))
    return infos


def load_backend(name: str, model: str | None = None, **options: Any) -> Backend:
    """Instantiate backend ``name`` and load ``model`` (a hub id or local folder; default: the embedded model)."""
    cls = backend_class(name)
    reason = cls.unavailable_reason(**{k: v for k, v in options.items() if k in ("device", "dtype", "attention")})
    if reason is not None:
        raise BackendUnavailableError(f"backend '{name}' is not available here: {reason}")
    cls.check_device_map(options.get("device_map"))  # before __init__: not every backend takes the option
    unknown = sorted(set(options) - accepted_options(cls))
    if unknown:
        raise LlavaAccelError(f"backend '{name}' does not take {', '.join(unknown)}; it takes: "
                              f"{', '.join(sorted(accepted_options(cls) - {'model'}))}")
    return cls(model=model, **options)


def accepted_options(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` takes: its ``__init__``'s, and, where that passes ``**options`` on, its
    base classes' (so that an option a backend does not know fails in one line, not in a TypeError)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return names


def split_label(label: str) -> tuple[str, dict[str, Any]]:
    """'cpu+int8' -> ('cpu', {'quantize': 'int8'}), 'cpu' -> ('cpu', {}): how the demo and the GPU check name a
    backend with quantised weights."""
    name, _, mode = label.partition("+")
    return name, ({"quantize": mode} if mode else {})


def row_label(name: str, options: dict[str, Any]) -> str:
    """The inverse of ``split_label``: 'cpu', or 'cpu+int8' for a quantised row."""
    return f"{name}+{options['quantize']}" if options.get("quantize") else name
