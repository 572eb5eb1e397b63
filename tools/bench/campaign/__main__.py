"""``python -m otaferry.tools.bench.campaign``"""

import sys

from .cli import main

sys.exit(main())
