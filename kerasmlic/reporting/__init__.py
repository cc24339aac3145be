"""Reporting: the study (``reproduce``), its ``results.md``, plots and statistics.

- :mod:`~kerasmlic.reporting.reproduce`: ``kerasmlic reproduce`` (tune, train
  over seeds, evaluate, report).
- :mod:`~kerasmlic.reporting.results`: ``results.md`` and its tables.
- :mod:`~kerasmlic.reporting.plots`, :mod:`~kerasmlic.reporting.analysis`,
  :mod:`~kerasmlic.reporting.stats`: figures, the per-class analysis, the
  paired comparison.
"""
