"""The thread policy for shared machines (zsvss_nb.run.threads) and the benchmark's busy processes.

The CLI runs in a fresh interpreter with busy processes beside it and a one-CPU affinity, the
way a user's job starts on a shared machine: it must end up with passive OpenMP waiting and one
thread per usable core. No timing is asserted.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zsvss_nb.errors import ConfigError
from zsvss_nb.run.bench.load import busy_processes
from zsvss_nb.run.threads import apply_thread_policy, current_policy, usable_cores

ROOT = Path(__file__).resolve().parents[1]
POLICY_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "ZSVSS_THREAD_POLICY")


def _clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without the thread variables (conftest sets one)."""
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def test_policy_sets_only_what_the_user_left_unset():
    env: dict[str, str] = {}
    policy = apply_thread_policy(env, force=True)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["OMP_NUM_THREADS"] == str(usable_cores())
    assert policy.wait_policy_by == policy.num_threads_by == "zsvss"
    assert any("set by zsvss" in line for line in policy.describe())
    again = apply_thread_policy(env, force=True)  # idempotent
    assert again == policy
    user = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3"}
    policy = apply_thread_policy(user, force=True)
    assert user["OMP_WAIT_POLICY"] == "ACTIVE" and user["OMP_NUM_THREADS"] == "3"
    assert (policy.wait_policy, policy.num_threads) == ("ACTIVE", 3)
    assert policy.wait_policy_by == policy.num_threads_by == "user"
    assert "ZSVSS_THREAD_POLICY" not in user
    # torch is imported in this process: without force nothing is set any more
    late: dict[str, str] = {}
    assert apply_thread_policy(late).wait_policy is None and not late
    assert current_policy(late).wait_policy_by == "nobody"


def test_usable_cores_follow_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = "from zsvss_nb.run.threads import usable_cores; print(usable_cores())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_clean_env(),
        preexec_fn=_one_cpu,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1"
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_cli_on_a_busy_machine_runs_passive_with_the_affinity_thread_count():
    with busy_processes(2) as procs:
        assert all(p.poll() is None for p in procs)
        out = subprocess.run(
            [sys.executable, "-m", "zsvss_nb", "info", "--model", "tiny"],
            env=_clean_env(),
            preexec_fn=_one_cpu,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
    assert "OpenMP wait policy: PASSIVE (set by zsvss" in out
    assert "cpu threads: 1)" in out
    assert "OMP_NUM_THREADS: 1 (set by zsvss" in out and "usable cores: 1 of" in out
    assert all(p.poll() is not None for p in procs)  # stopped when the block ended


def test_user_settings_win_and_import_applies_the_policy_before_torch():
    user = subprocess.run(
        [sys.executable, "-m", "zsvss_nb", "info"],
        env=_clean_env(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "OpenMP wait policy: ACTIVE (set in the environment)" in user
    assert "cpu threads: 1)" in user
    code = (
        "import os, zsvss_nb, torch; "
        "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], "
        "torch.get_num_threads())"
    )
    kernel = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, check=True
    )
    n = str(usable_cores())
    assert kernel.stdout.split() == ["PASSIVE", n, n]


def test_busy_processes_are_bounded_and_stopped_on_errors():
    with pytest.raises(ConfigError, match="busy processes"):
        with busy_processes(10_000):
            pass
    with pytest.raises(RuntimeError, match="inside"):
        with busy_processes(1) as procs:
            assert procs[0].poll() is None
            raise RuntimeError("inside")
    assert procs[0].poll() is not None
    # a spinner exits by itself at its deadline
    with busy_processes(1, max_seconds=0.0) as quick:
        quick[0].wait(timeout=60)
        assert quick[0].returncode == 0
