"""Output locks: one ``flock``-ed file ``.<name>.lock`` beside each output, and the claims a
run holds on its outputs from start to end.

The lock file holds the holder's pid, host and start time, kept under ``fcntl.flock``
(released by the kernel when the process dies, even by ``kill -9``) and opened with
``O_NOFOLLOW`` (a planted link is refused, never followed). A second run on the same output
fails at once with :class:`OutputLockedError`; a lock file whose holder is gone is taken over
with a warning. Without ``flock`` (another OS, or a file system that refuses it) liveness
falls back to the recorded pid on the same host. :func:`claim_output` holds a lock for the
whole run (re-entrant within one thread, so the run's own staging reuses it) and refuses an
output inside another live run's output (:class:`OutputOverlapError`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputLockedError, OutputOverlapError, PathError, os_problem

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of output ``target``: ``.<name>.lock`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    return (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"started {holder.get('started', '?')}"
    )


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _flock(fd: int, mode: int | None = None) -> bool | None:
    """True: locked; False: another process holds it; None: no flock here (use the pid)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if mode is None else mode) | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


def _open_lock(path: Path) -> int:
    """Open (create) the lock file; a symbolic link or anything but a regular file is refused."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PathError(
                f"{path}: the lock file is a symbolic link; zsvss never follows a link it did "
                "not create: remove it"
            ) from err
        raise PathError(f"{path}: cannot create the lock file ({os_problem(err)})") from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PathError(f"{path}: the lock file is not a regular file; remove it")
    return fd


def _record(fd: int, path: Path) -> None:
    """Write this process's pid, host and start time into the locked file ``path``."""
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode("utf-8"))
    except OSError as err:  # e.g. a full disk: leave no empty lock file behind
        _unlink_if_same(path, fd)
        raise PathError(f"{path}: cannot write the lock file ({os_problem(err)})") from err


def _unlink_if_same(path: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.lstat(path)):
            path.unlink()


def _acquire(target: Path, record: bool = True) -> int:
    path = lock_path(target)
    host = socket.gethostname()
    for _ in range(5):
        fd = _open_lock(path)
        try:
            state = _flock(fd)
            holder = _holder(fd)
            ours = holder.get("pid") == os.getpid() and holder.get("host") == host
            if state is None and holder and not ours:
                # no kernel lock: the recorded holder decides (another host counts as alive)
                state = not (holder.get("host") != host or _pid_alive(holder.get("pid")))
            if state is False or (ours and state is None):
                raise OutputLockedError(
                    f"{target}: another zsvss run ({describe_holder(holder)}) is writing this "
                    f"output; wait for it to end, or delete {path} if that run is gone"
                )
            try:  # the previous holder may have unlinked the file between our open and lock
                same = os.path.samestat(os.fstat(fd), os.lstat(path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if holder:
                log.warning(
                    "%s: taking over the stale lock %s (%s); that run ended without releasing it",
                    target,
                    path,
                    describe_holder(holder),
                )
            if record:
                _record(fd, path)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise OutputLockedError(f"{target}: its lock file {path} keeps changing; is another run busy?")


def _release(fd: int, path: Path) -> None:
    _unlink_if_same(path, fd)  # while still locked: nobody can take the old inode
    with contextlib.suppress(OSError):
        os.close(fd)


@contextlib.contextmanager
def hold_lock(target: str | os.PathLike[str], record: bool = True) -> Iterator[Path]:
    """Hold the lock of output ``target`` for the ``with`` block; yields the lock file's path.

    Raises :class:`OutputLockedError` at once when a live run holds it (this process too: it
    is not re-entrant, see :func:`claim_output`). ``record``: write this process's pid, host
    and start time into the lock file (what a second run reports).
    """
    target = Path(target)
    fd = _acquire(target, record)
    try:
        yield lock_path(target)
    finally:
        _release(fd, lock_path(target))


@dataclass(frozen=True)
class _Claim:
    target: Path
    lock: Path
    stat: os.stat_result


# the outputs this thread holds through claim_output (a context variable: each thread has its
# own, so a second thread on the same output is refused like a second process)
_CLAIMS: contextvars.ContextVar[tuple[_Claim, ...]] = contextvars.ContextVar(
    "zsvss_output_claims", default=()
)


def canonical(target: str | os.PathLike[str]) -> Path:
    """``target`` absolute, its parent's links resolved; a ``target`` that is itself a link
    resolved too, so a run through a link and one on the real folder share one lock."""
    target = Path(os.path.abspath(os.fspath(target)))
    if target.is_symlink():
        return Path(os.path.realpath(target))
    return Path(os.path.realpath(target.parent)) / target.name


def live_holder(lock: Path) -> dict | None:
    """The holder of lock file ``lock`` when a live run other than this thread's claims holds
    it, else None (no such file, a stale one, or ours)."""
    try:
        st = os.lstat(lock)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or any(os.path.samestat(st, c.stat) for c in _CLAIMS.get()):
        return None
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        state = _flock(fd, fcntl.LOCK_SH if fcntl is not None else None)
        holder = _holder(fd)
        if state is None:
            alive = holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid"))
            return holder if holder and alive else None
        return None if state else holder
    finally:
        os.close(fd)


def check_not_inside_live_output(target: str | os.PathLike[str], flag: str = "--out") -> None:
    """Refuse ``target`` when one of its folders is the output of another live zsvss run
    (that run would replace it, and this run's files with it, when it publishes)."""
    target = canonical(target)
    for folder in target.parents:
        if folder.parent == folder:
            break
        holder = live_holder(lock_path(folder))
        if holder is not None:
            raise OutputOverlapError(
                f"{flag} {target} lies inside {folder}, the output of another live zsvss run "
                f"({describe_holder(holder)}); wait for it to end or choose a folder outside it"
            )


def probe_lock(target: str | os.PathLike[str]) -> None:
    """Fail now, before a model loads, if another live run holds ``target``'s lock or one of
    its folders (creates nothing)."""
    target = canonical(target)
    holder = live_holder(lock_path(target))
    if holder is not None:
        raise OutputLockedError(
            f"{target}: another zsvss run ({describe_holder(holder)}) is writing this output; "
            f"wait for it to end, or delete {lock_path(target)} if that run is gone"
        )
    check_not_inside_live_output(target)


def is_claimed(target: str | os.PathLike[str]) -> bool:
    """Whether this thread holds ``target`` through :func:`claim_output`."""
    target = canonical(target)
    return any(c.target == target for c in _CLAIMS.get())


@contextlib.contextmanager
def claim_output(
    target: str | os.PathLike[str],
    flag: str = "--out",
    check: Callable[[Path], None] | None = None,
) -> Iterator[Path]:
    """Hold ``target``'s lock for the ``with`` block (the whole run); yields the lock's path.

    Re-entrant within this thread: a nested claim of the same output (the run's own
    :func:`staged_output`) reuses it. Creates ``target``'s missing parent folders for the lock
    and removes them again when the block fails. Refuses at once an output another live run
    holds (:class:`OutputLockedError`) or one inside another live run's output
    (:class:`OutputOverlapError`); ``check(target)`` runs once the lock is held (for an output
    folder, :func:`zsvss_nb.io.outputs.check_replaceable`: one that contains another live
    run's output is refused too). Whichever of two nested runs claims first wins.
    """
    target = canonical(target)
    for claim in _CLAIMS.get():
        if claim.target == target:
            yield claim.lock
            return
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PathError(f"{target}: cannot create its folder ({os_problem(err)})") from err
        fd = _acquire(target)
        claim = _Claim(target, lock_path(target), os.fstat(fd))
        token = _CLAIMS.set((*_CLAIMS.get(), claim))
        try:
            check_not_inside_live_output(target, flag)
            if check is not None:
                check(target)
            yield claim.lock
        finally:
            _CLAIMS.reset(token)
            _release(fd, claim.lock)
    except BaseException:
        for folder in created:  # innermost first; a folder another run filled stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
