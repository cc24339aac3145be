"""The ``kerasmlic`` command line (the top layer: it parses, the library does the work).

- :mod:`~kerasmlic.cli.app`: the parser, :func:`main` (the console script) and
  the data verbs ``synth``, ``build``, ``verify``;
- :mod:`~kerasmlic.cli.train`: ``train``, ``evaluate``, ``reproduce``;
- :mod:`~kerasmlic.cli.tune`: ``tune``;
- :mod:`~kerasmlic.cli.serve`: ``export``, ``predict``;
- :mod:`~kerasmlic.cli.data_service`: ``data-service dispatcher | worker``;
- :mod:`~kerasmlic.cli.demo`: ``demo``, the main job end to end;
- :mod:`~kerasmlic.cli.args`: argument types shared by the verbs.
"""

from kerasmlic.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
