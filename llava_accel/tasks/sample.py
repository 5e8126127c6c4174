"""The unit of every dataset: one image, one prompt, the answers that count as right."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Sample:
    image: Image.Image
    prompt: str
    references: list[str] = field(default_factory=list)  # may be empty when only speed is measured
    id: str = ""
    task: str = ""  # the task it came from (see llava_accel.tasks.TASKS); selects the native metric
    fields: dict[str, Any] = field(default_factory=dict)  # task-specific structure (e.g. ScienceQA hint, choices)


class SampleSet(list):
    """A task's samples (a plain ``list[Sample]``), plus the rows left out because their image was missing or
    unreadable: ``skipped`` holds (sample id, reason) pairs, so a long run reports them instead of crashing."""

    def __init__(self, samples=(), skipped=(), source: str = "") -> None:
        super().__init__(samples)
        self.skipped: list[tuple[str, str]] = list(skipped)
        self.source = source  # where the samples came from (hub id, folder, "synthetic")
