"""Render the notebooks: execute each with the reader's default model (dinov2-s) and commit
them with their outputs, so GitHub shows the figures (zsvss_nb.notebook.render).

    python notebooks/render.py            # all seven, one at a time
    python notebooks/render.py 00 03      # some of them
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from zsvss_nb.notebook.render import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
