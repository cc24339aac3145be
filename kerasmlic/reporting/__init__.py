"""Reporting: the study (``reproduce``), its ``results.md``, plots and statistics.

- :mod:`~kerasmlic.reporting.reproduce`: ``kerasmlic reproduce`` (tune, train
  over seeds, evaluate, report).
- :mod:`~kerasmlic.reporting.results`: ``results.md`` (one run per model, or
  a multi-seed study), from :mod:`~kerasmlic.reporting.tables` (the Markdown
  tables) and :mod:`~kerasmlic.reporting.runs` (loaded runs, the convergence
  rule, the study's model order).
- :mod:`~kerasmlic.reporting.plots`, :mod:`~kerasmlic.reporting.analysis`,
  :mod:`~kerasmlic.reporting.stats`: figures, the per-class analysis, the
  paired comparison.
"""
