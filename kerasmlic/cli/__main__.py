"""``python -m kerasmlic.cli`` runs the command line (as ``python -m kerasmlic`` does)."""

import sys

from kerasmlic.cli.app import main

sys.exit(main())
