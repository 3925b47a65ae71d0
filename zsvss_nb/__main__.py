"""``python -m zsvss_nb``: the command line (:mod:`zsvss_nb.run.cli`)."""

import sys

from .run.cli import main

sys.exit(main())
