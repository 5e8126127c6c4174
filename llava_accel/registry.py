"""Backend discovery through the ``llava_accel.backends`` entry-point group.

Built-ins are registered exactly like third-party plugins (see ``pyproject.toml``), so there is one code path.
Listing imports each backend's class module, which by convention imports nothing heavy at module level
(transformers and optional packages such as flash-attn are imported when a model is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from .errors import BackendUnavailableError, UnknownBackendError

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
    return cls(model=model, **options)


def split_label(label: str) -> tuple[str, dict[str, Any]]:
    """'cpu+int8' -> ('cpu', {'quantize': 'int8'}), 'cpu' -> ('cpu', {}): how the demo and the GPU check name a
    backend with quantised weights."""
    name, _, mode = label.partition("+")
    return name, ({"quantize": mode} if mode else {})


def row_label(name: str, options: dict[str, Any]) -> str:
    """The inverse of ``split_label``: 'cpu', or 'cpu+int8' for a quantised row."""
    return f"{name}+{options['quantize']}" if options.get("quantize") else name
