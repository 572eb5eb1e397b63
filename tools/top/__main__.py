"""``python -m otaferry``: the same command line as the ``otaferry`` script."""

import sys

from otaferry.tools.cli import main

sys.exit(main())
