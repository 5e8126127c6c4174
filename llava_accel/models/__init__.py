"""Model loading (hub id or local folder), the shipped architectures, and the tiny LLaVA builder."""

from .loading import DEFAULT_MODEL, LoadedModel, load_model, resolve_model_path

__all__ = ["DEFAULT_MODEL", "LoadedModel", "load_model", "resolve_model_path"]
