"""Run the zsvss benchmark, e.g. ``python benchmarks/run.py --model sd21-base-random``.

A thin wrapper over :func:`zsvss_nb.run.bench.main` (the same options as ``zsvss bench``); see
benchmarks/README.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zsvss_nb.run.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
