"""The ``Backend`` interface: model loading, shared preprocessing and decoding around one generation hook.

A backend subclass decides *how* token ids are generated (``generate_ids``) and which device, dtype and attention it
defaults to. Everything else (chat template, processor, left padding, decoding to text) lives here once, so every
backend sees byte-identical inputs and the measurement can compare them fairly.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
from PIL import Image

from .. import checks
from ..distributed import place
from ..errors import BackendUnavailableError, ImageError, OptionError
from ..image_size import check_img_size, context_length, enable_any_image_size, native_image_size
from ..models.loading import LoadedModel, check_attention, input_device, load_model, spread_devices
from ..preprocessing import EncodedBatch, ImageInput, encode, load_image
from ..truncation import check_context

DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise OptionError(f"unknown dtype '{dtype}'; use one of float16, bfloat16, float32") from None


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None


def missing_cuda() -> str | None:
    """What is missing for CUDA ("a CUDA GPU (torch ... is a CPU-only build)"), or None when a GPU is visible."""
    if torch.cuda.is_available():
        return None
    build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
    return f"a CUDA GPU (torch {torch.__version__} is {build})"


def cuda_unavailable_reason(device: str | None) -> str | None:
    """Why ``device`` cannot be used here, or None. Only CUDA devices can be missing."""
    if device is None or not str(device).startswith("cuda") or missing_cuda() is None:
        return None
    return f"needs {missing_cuda()}; pass device='cpu' (CLI: --device cpu) or use the 'cpu' backend"


@dataclass
class GenerationOutput:
    """One sample's answer: the decoded text and the generated token ids (prompt and padding excluded, EOS cut)."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    truncated: bool = False  # the prompt was cut to fit max_input_len
    prompt: str = ""  # the prompt as run (after any cut), before the chat template
    text_tokens: int = 0  # text tokens of the prompt as run (image tokens excluded)
    image_tokens: int = 0  # image tokens of its image (576 for LLaVA-1.5 at 336 px)


class Backend(ABC):
    """Base class for every backend, built-in or plugin.

    Subclasses set ``name`` and the ``default_*`` class attributes and implement ``generate_ids``; they may
    override ``unavailable_reason`` to say what hardware or package they need, and ``describe`` to report options.
    """

    name: ClassVar[str]
    default_device: ClassVar[str] = "cuda"
    default_dtype: ClassVar[str] = "float16"
    default_attention: ClassVar[str] = "sdpa"
    #: why the backend cannot run a model spread over several devices (``device_map``); None when it can
    device_map_refusal: ClassVar[str | None] = None

    def __init__(self, model: str | LoadedModel | None = None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, attention: str | None = None, device_map: str | None = None,
                 max_memory: dict | None = None, offload_folder: str | None = None, no_weights: bool = False) -> None:
        """``device_map``, ``max_memory``, ``offload_folder``: a model spread over devices (see ``load_model``);
        the inputs then go to its main device, which becomes ``self.device``. ``no_weights``: the model's shipped
        architecture with random weights made in ``dtype`` on ``device`` (for speed and memory, never quality)."""
        self.check_device_map(device_map)
        self.device = resolve_device(place(device or self.default_device))  # 'cuda': this process's GPU
        self.dtype = resolve_dtype(dtype or self.default_dtype)
        self.device_map = device_map
        attention = check_attention(attention or self.default_attention)
        if isinstance(model, LoadedModel):  # built in memory (random 7B weights for speed runs): shared, not copied
            if device_map:
                raise BackendUnavailableError("device_map applies when the backend loads the model from a folder or "
                                              "hub id, not to a model already in memory")
            model.model.to(self.device, self.dtype).set_attn_implementation(attention)
            self.loaded = model
        else:
            self.loaded = load_model(model, device=self.device, dtype=self.dtype, attention=attention,
                                     device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
                                     no_weights=no_weights, quantizer=self.block_quantizer() if no_weights else None)
            self.device = input_device(self.loaded.model, self.device)
        self.model = self.loaded.model
        self.processor = self.loaded.processor

    def block_quantizer(self) -> Any:
        """What quantises ``no_weights``' blocks as they are made (a ``quantize.BlockQuantizer``); None here."""
        return None

    @classmethod
    def check_device_map(cls, device_map: str | None) -> None:
        """A one-line refusal when ``device_map`` is asked of a backend that needs the whole model on one device."""
        if device_map is not None and cls.device_map_refusal:
            raise BackendUnavailableError(f"backend '{cls.name}' cannot use device_map='{device_map}': "
                                          f"{cls.device_map_refusal}")

    # -- what the backend is -------------------------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls, device: str | None = None, dtype: str | None = None,
                           attention: str | None = None) -> str | None:
        """None when the backend can run here with these settings, else a short reason saying what is missing."""
        return cuda_unavailable_reason(device or cls.default_device)

    @property
    def devices(self) -> list[torch.device]:
        """The devices the model computes on, the main one first: one, unless ``device_map`` spread it over several
        GPUs (the measurement then sums their energy meters)."""
        return list(dict.fromkeys([self.device, *spread_devices(self.model)]))

    @property
    def attention(self) -> str:
        """The attention implementation the model actually uses (transformers may fall back silently)."""
        return self.model.config._attn_implementation

    def describe(self) -> dict[str, Any]:
        """What ran: resolved settings, so that a result can always be traced back to its configuration."""
        init = {k: v for k, v in (("weights_init_s", self.loaded.init_s),
                                  ("init_rss_peak_bytes", self.loaded.init_rss_peak_bytes)) if v is not None}
        return {"backend": self.name, "model": self.loaded.model_id, "weights": self.loaded.weights, **init,
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                "attention": self.attention, "threads": torch.get_num_threads(), **self._placement()}

    def _placement(self) -> dict[str, Any]:
        """With ``device_map``: the strategy and how many top-level parts went to each device (or disk)."""
        if not getattr(self, "device_map", None):
            return {}
        placement = getattr(self.model, "hf_device_map", None)
        parts: dict[str, int] = {}
        for where in (placement or {"": str(self.device)}).values():
            name = f"cuda:{where}" if isinstance(where, int) else str(where)
            parts[name] = parts.get(name, 0) + 1
        return {"device_map": self.device_map, "device_map_parts": parts}

    def stats(self) -> dict[str, Any]:
        """What the backend counts about its own work since ``reset_stats()`` (e.g. speculative decoding's mean
        acceptance length); {} when it counts nothing. ``measure()`` records it without interpreting it."""
        return {}

    def reset_stats(self) -> None:
        """Start the counters behind ``stats()`` afresh (``measure()`` calls it after the warm-up batches)."""

    # -- generation ----------------------------------------------------------------------------------------------
    def encode(self, images: Sequence[ImageInput], prompts: Sequence[str], max_input_len: int | None = None,
               img_size: int | None = None, fields: Sequence[Mapping[str, Any] | None] | None = None) -> EncodedBatch:
        """``prepare`` plus what the knobs did (cut prompts, text and image token counts); see ``preprocessing.encode``.

        ``fields`` are the samples' ``Sample.fields``: ``max_input_len`` cuts a prompt's context and question only
        where they name them. A non-native ``img_size`` makes the vision tower interpolate its position embeddings.
        """
        prompts = checks.prompts(prompts, image_token=self.processor.image_token)
        if isinstance(images, (str, os.PathLike, Image.Image)) or not isinstance(images, Sequence):
            raise ImageError(f"images must be a list, one image per prompt, got {type(images).__name__}")
        if len(images) != len(prompts):
            raise ImageError(f"got {len(images)} images for {len(prompts)} prompts; pass one image per prompt")
        if check_img_size(self.model.config, img_size) not in (None, native_image_size(self.model.config)):
            enable_any_image_size(self.model)
        batch = encode(self.processor, [load_image(i) for i in images], prompts, max_input_len, img_size, fields)
        check_context(batch.text_tokens, batch.image_tokens, context_length(self.model.config))
        batch.inputs = {k: v.to(self.device, dtype=self.dtype if v.is_floating_point() else v.dtype)
                        for k, v in batch.inputs.items()}
        return batch

    def prepare(self, images: Sequence[ImageInput], prompts: Sequence[str], max_input_len: int | None = None,
                img_size: int | None = None, fields: Sequence[Mapping[str, Any] | None] | None = None
                ) -> dict[str, torch.Tensor]:
        """Chat template + processor + left padding, moved to the backend's device and dtype."""
        return self.encode(images, prompts, max_input_len, img_size, fields).inputs

    @abstractmethod
    def generate_ids(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int | None = None,
                     streamer: Any = None) -> torch.Tensor:
        """Greedy generation; returns only the new token ids, shape (batch, new_tokens), padded after EOS.

        ``streamer`` follows transformers' ``BaseStreamer``: ``put`` once with the prompt ids, then once per
        generated step with that step's tokens, then ``end``. The measurement uses it to time the first token.
        """

    def generate(self, images: Sequence[ImageInput], prompts: Sequence[str], max_new_tokens: int = 32,
                 min_new_tokens: int | None = None, streamer: Any = None, max_input_len: int | None = None,
                 img_size: int | None = None, fields: Sequence[Mapping[str, Any] | None] | None = None
                 ) -> list[GenerationOutput]:
        """Answer each prompt about its image. ``min_new_tokens=max_new_tokens`` forces equal work for timing;
        ``max_input_len``, ``img_size`` and ``fields`` as in ``encode`` (each output holds its prompt as run and says if
        it was cut)."""
        checks.positive_int(max_new_tokens, "max_new_tokens")
        checks.optional(checks.non_negative_int, min_new_tokens, "min_new_tokens")
        batch = self.encode(images, prompts, max_input_len, img_size, fields)
        with torch.inference_mode():
            new_ids = self.generate_ids(batch.inputs, max_new_tokens, min_new_tokens, streamer)
        outputs = self.decode(new_ids)
        for out, cut, prompt, text_tokens in zip(outputs, batch.truncated, batch.prompts, batch.text_tokens):
            out.truncated, out.prompt, out.text_tokens, out.image_tokens = cut, prompt, text_tokens, batch.image_tokens
        return outputs

    def decode(self, new_ids: torch.Tensor) -> list[GenerationOutput]:
        tokenizer = self.processor.tokenizer
        outputs = []
        for row in new_ids.tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            outputs.append(GenerationOutput(tokenizer.decode(row, skip_special_tokens=True).strip(), row))
        return outputs


def default_threads() -> int:
    """CPUs this process may run on (respects taskset and cgroup affinity, unlike ``os.cpu_count``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
