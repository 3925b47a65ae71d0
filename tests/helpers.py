"""Plain helpers shared by test files (fixtures live in conftest.py): planted frames and the
CLI run in a child process that a test signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHILD_ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}


def moving_box_frames(n: int, h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """[n, h, w, 3] uint8: a gradient with a red box moving 6 px a frame, plus a little noise."""
    rng = np.random.default_rng(seed)
    video = np.empty((n, h, w, 3), np.uint8)
    video[...] = np.linspace(30, 200, w, dtype=np.uint8)[None, None, :, None]
    for t in range(n):
        video[t, h // 4 : h // 4 + h // 3, 8 + 6 * t : 8 + 6 * t + w // 3] = (230, 40, 30)
    noisy = video.astype(np.int16) + rng.integers(-6, 7, video.shape)
    return noisy.clip(0, 255).astype(np.uint8)


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """``zsvss -q ARGS`` in a child process, text pipes for stdout and stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "zsvss_nb", "-q", *args],
        env=CHILD_ENV,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control (e.g. `nohup .ci/run &`) starts its background jobs with
        # SIGINT ignored, which Python and so the child would inherit: give it the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    """Poll until ``ready()``; fail if the child ends first or 300 s pass."""
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} within 300 s"
        time.sleep(0.005)


def signal_child(proc: subprocess.Popen, sig: int) -> str:
    """Send ``sig``, wait for the child to end and return its stderr (killed if it hangs)."""
    try:
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return stderr
