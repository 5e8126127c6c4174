"""The study: resumable sweeps over a grid of configurations, a per-layer profile, and a report with plots."""

from .spec import Point, ProfilePoint, SpecError, SweepSpec, load_spec, parse_spec
from .store import ResultStore, latest_records, read_records

__all__ = ["Point", "ProfilePoint", "ResultStore", "SpecError", "SweepSpec", "latest_records", "load_spec",
           "parse_spec", "read_records"]
