"""nbval runs the notebooks under CI's model and this checkout's package.

``CI`` set makes ``MODEL = None`` pick the seeded tiny model in FAST mode
(zsvss_nb.notebook.session.default_model), so the test command never depends on which backbones
are installed; ``ZSVSS_MODEL``, when set, still picks the model. ``PYTHONPATH`` puts this
checkout first, as the tests' own subprocesses do. Both are read when nbval starts a kernel.
"""

import os
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
os.environ.setdefault("CI", "1")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
