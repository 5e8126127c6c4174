"""Metrics, one module per idea: ``wer``, ``latency``, ``energy``, ``flops``, ``mfu``, ``memory``, ``environment``
(used by ``llava_accel.measure``), and the tasks' native metrics: ``vqa``, ``choice``, and for captions ``caption``
(``bleu``, ``meteor``, ``rouge``, ``cider`` on the tokens of ``ptb``: ``ptb_lexer`` in Python or pycocoevalcap's jars
through ``java``).

Definitions: docs/metrics.md.
"""
