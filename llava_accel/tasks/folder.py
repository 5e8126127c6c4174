"""Any local data as samples: ``DIR/samples.jsonl``, one JSON object per line, and the images beside it.

Each line: ``image`` (a path relative to DIR and inside it: no absolute path, no ``..`` out of DIR, so the folder
is self-contained and can be moved or copied whole), ``prompt``, ``references`` (a list of strings; may be
empty when only speed is measured) and optionally ``id``. A missing file or field is a one-line ``DatasetError``
naming it; a missing or unreadable image skips its line and is recorded in ``SampleSet.skipped``.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from .. import checks
from ..errors import DatasetError, ImageError
from .sample import Sample, SampleSet
from .sources import SAMPLES_FILE, _jsonl_rows, open_image

FIELDS = ("image", "prompt", "references")


def load_folder(path: str | os.PathLike, limit: int | None = None) -> SampleSet:
    """The first ``limit`` samples of ``path`` (a folder holding samples.jsonl, or the .jsonl file itself)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data folder not found: {path}")
    jsonl = path / SAMPLES_FILE if path.is_dir() else path
    if not jsonl.is_file():
        raise DatasetError(f"{jsonl} not found: a data folder holds {SAMPLES_FILE}, one JSON object per line with "
                           f"{', '.join(FIELDS)} (and optionally id)")
    samples, skipped = [], []
    for index, (where, row) in enumerate(_jsonl_rows(jsonl, limit)):
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise DatasetError(f"{where}: no field '{missing[0]}' (each line needs {', '.join(FIELDS)})")
        refs = row["references"]
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise DatasetError(f"{where}: 'references' must be a list of strings, got {refs!r:.60}")
        if not isinstance(row["prompt"], str) or not isinstance(row["image"], str):
            raise DatasetError(f"{where}: 'prompt' and 'image' must be strings")
        checks.prompt(row["prompt"], f"{where}: 'prompt'")
        sample_id = str(row.get("id", f"{jsonl.parent.name}/{index}"))
        try:
            image = open_image(row["image"], jsonl.parent, where)
        except (ImageError, Image.DecompressionBombError) as exc:
            skipped.append((sample_id, str(exc)))
            continue
        samples.append(Sample(image, row["prompt"], refs, id=sample_id))
    return SampleSet(samples, skipped, source=str(jsonl))
