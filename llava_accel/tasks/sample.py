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
