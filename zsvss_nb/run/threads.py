"""How zsvss's compute threads wait and how many there are: a policy for shared machines.

OpenMP's default wait policy lets idle worker threads spin for a while before they sleep. On a
machine where other jobs (another notebook kernel, a data loader, a second xdist worker) hold
the cores, those spinning threads compete with the threads doing the work and a small tensor op
can take seconds: 14 tiny-model frames took more than 300 s on 2 busy cores instead of 44 s
(issue 18). So, before torch is loaded, zsvss sets ``OMP_WAIT_POLICY=PASSIVE`` and
``OMP_NUM_THREADS`` to the CPUs this process may use (its CPU affinity mask, capped by a cgroup
CPU quota), each only when the user has not set it. The ``zsvss``
entry point applies the policy first thing; ``import zsvss_nb`` applies it when torch has not
been imported yet (a fresh Jupyter kernel). ``ZSVSS_THREAD_POLICY`` names the variables zsvss
set, so ``zsvss info`` (and child processes) can tell them from the user's.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

WAIT_VAR = "OMP_WAIT_POLICY"
THREADS_VAR = "OMP_NUM_THREADS"
MARKER_VAR = "ZSVSS_THREAD_POLICY"  # comma-separated names of the variables zsvss set


@dataclass(frozen=True)
class ThreadPolicy:
    """The thread settings in effect: values, and who chose them ("zsvss" or "user").

    ``wait_policy``/``num_threads`` are None when neither the user nor zsvss set the variable
    (torch was imported before the policy could apply: the runtime's defaults hold).
    """

    wait_policy: str | None
    wait_policy_by: str
    num_threads: int | None
    num_threads_by: str
    usable_cores: int

    def describe(self) -> list[str]:
        """Two lines for ``zsvss info``."""

        def origin(by: str, var: str) -> str:
            if by == "zsvss":
                return f"set by zsvss; export {var} to choose"
            if by == "user":
                return "set in the environment"
            return "not set: torch was imported before zsvss"

        wait = self.wait_policy or "runtime default"
        threads = self.num_threads if self.num_threads is not None else "runtime default"
        return [
            f"OpenMP wait policy: {wait} ({origin(self.wait_policy_by, WAIT_VAR)})",
            f"OMP_NUM_THREADS: {threads} ({origin(self.num_threads_by, THREADS_VAR)}); "
            f"usable cores: {self.usable_cores} of {os.cpu_count()} CPUs",
        ]


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cgroup_cpu_limit() -> float | None:
    """CPUs granted by a cgroup quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        base = Path("/sys/fs/cgroup/cpu")
        quota = int((base / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """CPUs this process may run on: ``len(os.sched_getaffinity(0))`` (a job scheduler's or
    ``taskset``'s mask, not the machine's count), at most the cgroup's CPU quota, at least 1."""
    count = len(_allowed_cpus())
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, math.floor(limit))
    return max(1, count)


def _marked(env: MutableMapping[str, str]) -> set[str]:
    """The variables zsvss set itself, as recorded in ``MARKER_VAR``."""
    return set(filter(None, env.get(MARKER_VAR, "").split(",")))


def current_policy(environ: MutableMapping[str, str] | None = None) -> ThreadPolicy:
    """The policy ``environ`` (default: ``os.environ``) holds, with who set each variable."""
    env = os.environ if environ is None else environ
    ours = _marked(env)

    def by(var: str) -> str:
        if var not in env:
            return "nobody"
        return "zsvss" if var in ours else "user"

    threads = env.get(THREADS_VAR)
    return ThreadPolicy(
        wait_policy=env.get(WAIT_VAR),
        wait_policy_by=by(WAIT_VAR),
        num_threads=int(threads) if threads and threads.strip().isdigit() else None,
        num_threads_by=by(THREADS_VAR),
        usable_cores=usable_cores(),
    )


def apply_thread_policy(
    environ: MutableMapping[str, str] | None = None, force: bool = False
) -> ThreadPolicy:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS`` = :func:`usable_cores` in
    ``environ`` where the user has not set them, if torch is not imported yet (OpenMP reads them
    when torch loads it; ``force`` skips that check, for tests on a copied environment).
    Returns the policy in effect."""
    env = os.environ if environ is None else environ
    if force or "torch" not in sys.modules:
        ours = _marked(env)
        if WAIT_VAR not in env:
            env[WAIT_VAR] = "PASSIVE"
            ours.add(WAIT_VAR)
        if THREADS_VAR not in env:
            env[THREADS_VAR] = str(usable_cores())
            ours.add(THREADS_VAR)
        if ours:
            env[MARKER_VAR] = ",".join(sorted(ours))
    return current_policy(env)


__all__ = ["ThreadPolicy", "apply_thread_policy", "current_policy", "usable_cores"]
