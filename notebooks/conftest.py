"""nbval runs the notebooks under CI's model: ``CI`` set makes ``MODEL = None`` pick the seeded
tiny model in FAST mode (zsvss_nb.notebook.session.default_model), so the test command never
depends on which backbones are installed. ``ZSVSS_MODEL``, when set, still picks the model."""

import os

os.environ.setdefault("CI", "1")  # read when nbval starts each notebook's kernel
