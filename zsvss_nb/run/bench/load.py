"""Busy processes beside the benchmark's workload: what a shared machine does to its speed.

``zsvss bench --load N`` runs the primary mode once more with N processes that each spin on one
core, and reports the loaded/idle ratio (issue 18: with passive OpenMP waiting, the target is at
most 3x with 2 busy processes on 2 cores). The spinners are bounded: at most
:data:`MAX_PER_CPU` per CPU, each exits by itself after ``max_seconds`` or as soon as its parent
is gone, and :func:`busy_processes` stops them when its block ends, errors and interrupts
included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ...errors import ConfigError

MAX_PER_CPU = 4
MAX_SECONDS = 6 * 3600.0

# spin until the deadline or until the parent process is gone (then getppid() changes)
_SPIN = (
    "import os, sys, time\n"
    "parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])\n"
    "while time.monotonic() < end and os.getppid() == parent:\n"
    "    for _ in range(200000):\n"
    "        pass\n"
)


def check_load(n: int) -> None:
    """A one-line :class:`ConfigError` unless 0 <= ``n`` <= :data:`MAX_PER_CPU` per CPU."""
    limit = MAX_PER_CPU * (os.cpu_count() or 1)
    if not 0 <= n <= limit:
        raise ConfigError(f"--load {n}: use 0..{limit} busy processes ({MAX_PER_CPU} per CPU)")


@contextmanager
def busy_processes(n: int, max_seconds: float = MAX_SECONDS) -> Iterator[list[subprocess.Popen]]:
    """``n`` CPU-bound Python processes alive while the block runs; stopped when it ends."""
    check_load(n)
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-S", "-c", _SPIN, str(os.getpid()), str(max_seconds)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


__all__ = ["MAX_PER_CPU", "MAX_SECONDS", "busy_processes", "check_load"]
