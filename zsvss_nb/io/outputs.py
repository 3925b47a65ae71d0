"""Transactional outputs: a lock per output, a staging folder, one publish, and input protection.

A run never writes into its output folder directly. :func:`staged_output` holds the output's
lock (:func:`hold_lock`), lets the run fill a fresh staging folder beside the output (named like
every temp file, ``.<name>.<12 hex>.tmp``, so it is on the same file system) and, only when the
run succeeds, publishes it: the previous output is renamed to ``.<name>.<12 hex>.old``, the
staging folder to the output's name, and the old one is deleted. A failed or interrupted run
removes its staging folder and leaves the previous output exactly as it was; a rerun replaces
the whole previous output, so no stale frame of an earlier run survives beside the new ones.
What a killed run leaves (staging folders, temp files, a backup caught between the two renames)
is cleaned, or restored, by the next run on the same output while it holds the lock.

The lock is a file ``.<name>.lock`` beside the output holding the holder's pid, host and start
time, kept under ``fcntl.flock`` (released by the kernel when the process dies, even by
``kill -9``). A second run on the same output fails at once with :class:`OutputLockedError`; a
lock file whose holder is gone is taken over with a warning. Without ``flock`` (another OS, or a
file system that refuses it) liveness falls back to the recorded pid on the same host.

:func:`check_disjoint` refuses an output that is, contains or lies inside one of the run's
inputs; :func:`check_output_folder`, :func:`check_output_file` and :func:`probe_lock` check
what is known before the model loads, so a bad ``--out`` or ``--json`` fails at once.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..errors import InputError, OutputLockedError, OutputOverlapError, PathError, os_problem
from .writers import is_temp_file, temp_path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
BACKUP_SUFFIX = ".old"


# -- paths known up front ---------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _probe_write(folder: Path, what: str) -> None:
    """Create and delete a temp file in ``folder``: the one reliable test of writability."""
    probe = temp_path(folder / "zsvss-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise PathError(f"{what}: cannot write in {folder} ({os_problem(err)})") from err


def check_output_folder(path: str | os.PathLike[str], flag: str = "--out", beside: bool = True):
    """``path`` can become an output folder: not a file, and the folder it is written in
    (``path``'s parent when ``beside``, as staging folders live beside the output; ``path``
    itself otherwise), or its nearest existing ancestor, is a writable folder."""
    path = Path(path)
    what = f"{flag} {path}"
    if path.is_symlink() and not path.exists():
        raise PathError(f"{what}: is a broken symbolic link")
    if path.exists() and not path.is_dir():
        raise PathError(f"{what}: is a file, not a folder")
    where = _nearest_existing(path.parent if beside else path)
    if not where.is_dir():
        raise PathError(f"{what}: {where} is not a folder")
    _probe_write(where, what)


def check_output_file(path: str | os.PathLike[str], flag: str = "--json") -> None:
    """``path`` can be written as a file: not a folder, in an existing, writable folder."""
    path = Path(path)
    what = f"{flag} {path}"
    if path.is_dir():
        raise PathError(f"{what}: is a folder, not a file")
    parent = path.parent
    if not parent.exists():
        raise PathError(f"{what}: folder {parent} does not exist")
    if not parent.is_dir():
        raise PathError(f"{what}: {parent} is not a folder")
    _probe_write(parent, what)


def _real(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def check_disjoint(
    out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]], flag: str = "--out"
) -> None:
    """Refuse an output that is, contains or lies inside any of ``inputs`` (files or folders).

    Paths are compared after resolving symbolic links. A video file's folder is not an input:
    an output beside the file is fine, one that contains it is not.
    """
    target = _real(out)
    for item in inputs:
        source = _real(item)
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "lies inside"
        elif target in source.parents:
            relation = "contains"
        else:
            continue
        raise OutputOverlapError(
            f"{flag} {out} {relation} the input {item}; outputs never overwrite inputs, "
            "choose a folder outside it"
        )


# -- the lock ---------------------------------------------------------------------------------
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


def _describe(holder: dict) -> str:
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


def _flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: no flock here (use the pid)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


def _acquire(target: Path, record: bool = True) -> int:
    path = lock_path(target)
    host = socket.gethostname()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise PathError(f"{path}: cannot create the lock file ({os_problem(err)})") from err
        try:
            state = _flock(fd)
            holder = _holder(fd)
            ours = holder.get("pid") == os.getpid() and holder.get("host") == host
            if state is None and holder and not ours:
                # no kernel lock: the recorded holder decides (another host counts as alive)
                state = not (holder.get("host") != host or _pid_alive(holder.get("pid")))
            if state is False or (ours and state is None):
                raise OutputLockedError(
                    f"{target}: another zsvss run ({_describe(holder)}) is writing this output; "
                    f"wait for it to end, or delete {path} if that run is gone"
                )
            try:  # the previous holder may have unlinked the file between our open and lock
                same = os.path.samestat(os.fstat(fd), os.stat(path))
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
                    _describe(holder),
                )
            if record:
                me = {
                    "pid": os.getpid(),
                    "host": host,
                    "started": datetime.datetime.now().isoformat(timespec="seconds"),
                }
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps(me).encode("utf-8"))
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
    raise OutputLockedError(f"{target}: its lock file {path} keeps changing; is another run busy?")


@contextlib.contextmanager
def hold_lock(target: str | os.PathLike[str], record: bool = True) -> Iterator[Path]:
    """Hold the lock of output ``target`` for the ``with`` block; yields the lock file's path.

    Raises :class:`OutputLockedError` at once when a live run holds it. ``record``: write this
    process's pid, host and start time into the lock file (what a second run reports).
    """
    target = Path(target)
    fd = _acquire(target, record)
    try:
        yield lock_path(target)
    finally:
        with contextlib.suppress(OSError):
            lock_path(target).unlink()  # while still locked: nobody can take the old inode
        os.close(fd)


def probe_lock(target: str | os.PathLike[str]) -> None:
    """Fail now, before a model loads, if a live run holds ``target``'s lock."""
    target = Path(target)
    if _nearest_existing(target.parent) == target.parent:
        with hold_lock(target, record=False):
            pass


# -- staging and publishing -------------------------------------------------------------------
def _leftovers(target: Path, suffix: str) -> list[Path]:
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.[0-9a-f]{{12}}{re.escape(suffix)}$")
    if not target.parent.is_dir():
        return []
    return [p for p in target.parent.iterdir() if pattern.match(p.name)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(target: str | os.PathLike[str]) -> list[Path]:
    """Clean what killed runs on ``target`` left beside it (call while holding its lock).

    A backup caught between the two renames of a publish is restored when ``target`` is
    missing (with a warning) and deleted otherwise; staging folders and temp files are deleted.
    Returns the paths removed or restored.
    """
    target = Path(target)
    touched = []
    for backup in sorted(_leftovers(target, BACKUP_SUFFIX), key=lambda p: p.stat().st_mtime):
        if not target.exists():
            os.rename(backup, target)
            log.warning("%s: restored the previous output from %s (a cut publish)", target, backup)
        else:
            _remove(backup)
        touched.append(backup)
    for leftover in _leftovers(target, ".tmp"):
        _remove(leftover)
        touched.append(leftover)
    return touched


def check_replaceable(target: str | os.PathLike[str], owned: Callable[[Path], bool]) -> None:
    """``target`` is absent, empty, or holds only what zsvss writes there (``owned``)."""
    target = Path(target)
    if not target.is_dir():
        return
    for entry in sorted(target.iterdir()):
        if not (owned(entry) or is_temp_file(entry)):
            raise InputError(
                f"{target}: holds {entry.name!r}, which zsvss did not write; refusing to "
                "replace the folder (choose a new or empty output folder)"
            )


def publish(staging: Path, target: Path) -> None:
    """Make ``staging`` the folder ``target``, replacing the previous one as a whole."""
    if not target.exists():
        os.rename(staging, target)
        return
    backup = target.with_name(f".{target.name}.{secrets.token_hex(6)}{BACKUP_SUFFIX}")
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    _remove(backup)


def _write_failure(target: Path, err: OSError) -> PathError:
    cause = err
    while isinstance(cause, PathError) and isinstance(cause.__cause__, OSError):
        cause = cause.__cause__
    return PathError(f"{target}: cannot write the outputs ({os_problem(cause)})")


@contextlib.contextmanager
def staged_output(target: str | os.PathLike[str], owned: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty staging folder for output folder ``target``; publish it on success.

    Holds ``target``'s lock throughout, cleans what killed runs left (:func:`recover`) and
    refuses a ``target`` holding files zsvss did not write (``owned`` says which entries are
    its own). On any failure or interrupt the staging folder, and any parent folder created
    for it, is removed and ``target`` is left exactly as it was. A file-system failure while
    writing (the writers' :class:`PathError`, or a failed rename) is a :class:`PathError`
    naming ``target``.
    """
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    target = Path(os.path.abspath(target))
    if target.exists() and not target.is_dir():
        raise PathError(f"{target}: is a file, not a folder")
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _write_failure(target, err) from err
        with hold_lock(target):
            recover(target)
            check_replaceable(target, owned)
            staging = temp_path(target)
            try:
                try:
                    staging.mkdir()
                except OSError as err:
                    raise _write_failure(target, err) from err
                yield staging
                try:
                    publish(staging, target)
                except OSError as err:
                    raise _write_failure(target, err) from err
            except PathError as err:
                _remove(staging)
                if err.__cause__ is None or str(err).startswith(f"{target}:"):
                    raise
                raise _write_failure(target, err) from err
            except BaseException:
                _remove(staging)
                raise
    except BaseException:
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
