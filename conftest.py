"""Test-session settings shared by every test file."""

import os

# OpenMP busy-waits when the two CI cores are shared by pytest-xdist workers; passive waiting
# keeps small tensor ops from stalling (a tiny UNet call drops from seconds to milliseconds).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
