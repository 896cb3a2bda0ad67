"""``python -m gpucnn.cli`` runs the command line, as ``python -m gpucnn`` does."""

import sys

from . import main

sys.exit(main())
