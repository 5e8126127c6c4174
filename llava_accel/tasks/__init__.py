"""Datasets as data: samples, the synthetic twins of the study's tasks."""

from .sample import Sample
from .synthetic import GENERATORS as SYNTHETIC_TASKS, synthetic_samples

__all__ = ["Sample", "SYNTHETIC_TASKS", "synthetic_samples"]
