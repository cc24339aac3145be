"""``python -m kerasmlic`` runs the command line."""

import sys

from kerasmlic.cli import main

sys.exit(main())
