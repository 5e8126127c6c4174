"""Result tables in the format a user asks for (``--format``, as llama-bench's ``-o``): aligned text for a
terminal, Markdown, CSV or JSON. CSV and JSON keep full-precision numbers and empty cells for missing values."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Mapping, Sequence

from .errors import OptionError

FORMATS = ("text", "md", "csv", "json")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "; ".join(map(str, value))
    return str(value)


def render(rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """``rows`` (dicts with the same keys, in column order) as one table in ``fmt``."""
    if fmt not in FORMATS:
        raise OptionError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(list(rows), indent=1)
    header = list(rows[0]) if rows else []
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if r[k] is None else "; ".join(map(str, r[k])) if isinstance(r[k], list) else r[k]
                           for k in header] for r in rows])
        return buf.getvalue().rstrip("\n")
    from .study.tables import format_table

    cells = [[_cell(r[k]).replace("|", "/") if fmt == "md" else _cell(r[k]) for k in header] for r in rows]
    return format_table(header, cells, markdown=fmt == "md")
