"""Metrics, one module per idea: ``wer``, ``latency``, ``energy``, ``flops``, ``mfu``, ``memory``, ``environment``
(used by ``llava_accel.measure``), and the tasks' native metrics (``vqa``, ``cider``, ``choice``).

Definitions: docs/metrics.md.
"""
