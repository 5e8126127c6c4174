"""What a result was measured on: library versions, CPU, threads, GPU and driver."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch

from ..backends.base import default_threads
from .mfu import cpu_model

PACKAGES = ("llava-accel", "torch", "transformers", "accelerate", "tokenizers", "numpy", "pillow", "jiwer",
            "nvidia-ml-py", "flash-attn")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def gpu_info(device: torch.device) -> dict[str, Any]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    info: dict[str, Any] = {"name": props.name, "memory_bytes": props.total_memory,
                            "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version(), "count": torch.cuda.device_count()}
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        pynvml.nvmlShutdown()
    except Exception:  # no nvidia-ml-py or no driver access: the rest is still worth recording
        info["driver"] = None
    return info


def collect(device: str | torch.device = "cpu") -> dict[str, Any]:
    device = torch.device(device)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: v for p in PACKAGES if (v := _version(p))},
        "cpu": {"model": cpu_model(), "logical_cpus": os.cpu_count(),
                "usable_cpus": default_threads(),
                "torch_threads": torch.get_num_threads()},
        "gpu": gpu_info(device) if device.type == "cuda" else None,
    }
