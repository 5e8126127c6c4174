"""llava_accel: fast LLaVA-1.5 inference backends, and an honest measurement of what each speed-up costs.

    import llava_accel as la
    b = la.load_backend("cpu")                      # the embedded tiny model by default
    b.generate(images=[img], prompts=["What is written on the sign?"])
"""

from . import quiet  # noqa: F401  (first: its log filters are in place before torch or torchao log)
from .backends.base import Backend, GenerationOutput
from .errors import (BackendUnavailableError, DatasetError, ImageError, LlavaAccelError, ModelNotFoundError,
                     PromptTooLongError, UnknownBackendError)
from .measure import measure
from .models.loading import DEFAULT_MODEL
from .registry import BackendInfo, list_backends, load_backend
from .result import MeasureResult
from .tasks import Sample, SampleSet, load_task

__version__ = "0.1.0"

__all__ = ["Backend", "BackendInfo", "BackendUnavailableError", "DEFAULT_MODEL", "DatasetError", "GenerationOutput",
           "ImageError", "LlavaAccelError", "MeasureResult", "ModelNotFoundError", "PromptTooLongError", "Sample", "SampleSet",
           "UnknownBackendError", "list_backends", "load_backend", "load_task",
           "measure"]
