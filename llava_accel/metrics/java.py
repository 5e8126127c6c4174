"""Where pycocoevalcap's Java tools are: its Stanford PTBTokenizer and METEOR 1.5 jars, and a ``java`` to run them.

Both are optional (``pip install llava-accel[coco]`` and a Java runtime): without them the Python tokenizer scores
captions and METEOR is left out, with the reason recorded. Nothing here imports pycocoevalcap's Python code, which
would start Java at import time in places; we only need the location of its jars.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from ..errors import install_hint

PTB_JAR = Path("tokenizer") / "stanford-corenlp-3.4.1.jar"
METEOR_JAR = Path("meteor") / "meteor-1.5.jar"


def pycocoevalcap_dir() -> Path | None:
    """The installed pycocoevalcap package folder, or None."""
    spec = importlib.util.find_spec("pycocoevalcap")
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def java_jar(jar: Path) -> tuple[str, Path] | str:
    """(java executable, jar path) for one of pycocoevalcap's jars, or a one-line reason why it cannot run here."""
    java = shutil.which("java")
    folder = pycocoevalcap_dir()
    if folder is None or not (folder / jar).is_file():
        return f"needs pycocoevalcap 1.2 ({install_hint('coco')})"
    if java is None:
        return "needs a Java runtime (`java` on PATH) to run pycocoevalcap's jars"
    return java, folder / jar
