"""Transactional outputs: a lock per output, a staging folder, one publish, and input protection.

A run never writes into its output folder directly. :func:`staged_output` holds the output's
lock, lets the run fill a fresh staging folder beside the output (named like every temp file,
``.<name>.<12 hex>.tmp``, so it is on the same file system) and, only when the run succeeds,
publishes it: the previous output is renamed to ``.<name>.<12 hex>.old``, the staging folder to
the output's name, and the old one is deleted (SIGINT and SIGTERM wait while the two renames
run). A failed or interrupted run removes its staging folder and leaves the previous output
exactly as it was; a rerun replaces the whole previous output, so no stale frame of an earlier
run survives beside the new ones. What a killed run leaves (staging folders, temp files, a
backup caught between the two renames) is cleaned, or restored, by the next run on the same
output while it holds the lock.

What may be replaced is decided by the output's manifest: a folder is replaced only when it is
empty or when every file in it, at any depth, is the manifest or a file the manifest lists
(:func:`check_replaceable`); anything else is the user's and the run is refused.

Each output is held through :func:`zsvss_nb.io.locks.claim_output` (``.<name>.lock`` beside
it, from before the model loads to the end); an output that lies inside or contains another
live run's output is refused (:class:`OutputOverlapError`), when the claim is taken and again
right before publishing.

:func:`check_disjoint` refuses an output that is, contains or lies inside one of the run's
inputs; :func:`check_output_folder`, :func:`check_output_file` and
:func:`~zsvss_nb.io.locks.probe_lock` check
what is known before the model loads (names that fit the file system with their temp names,
mount points), so a bad ``--out`` or ``--json`` fails at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..errors import (
    InputError,
    InterruptedAfterPublish,
    OutputOverlapError,
    PathError,
    os_problem,
)
from .locks import (
    canonical,
    check_not_inside_live_output,
    claim_output,
    describe_holder,
    live_holder,
)
from .writers import is_temp_file, temp_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # an output folder's list of its files (see check_replaceable)
DONE_FILE = ".done.json"  # a dataset video's manifest, written last: the video is finished
BACKUP_SUFFIX = ".old"
_LOCK_NAME = re.compile(r"^\.(.+)\.lock$")
# what a temp name adds to the name it stands for: "." before, ".<12 hex>.tmp" after
TEMP_OVERHEAD = len(os.fsencode(temp_path(Path("x")).name)) - 1


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
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.close(fd)
        probe.unlink()
    except OSError as err:
        raise PathError(f"{what}: cannot write in {folder} ({os_problem(err)})") from err


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(_nearest_existing(folder), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_name_fits(path: str | os.PathLike[str], what: str) -> None:
    """``path``'s name leaves room for the temp name zsvss writes it through (18 bytes more):
    a name that only fits without them would fail when the finished run is written."""
    path = Path(path)
    limit = _name_max(path.parent)
    size = len(os.fsencode(path.name))
    if size + TEMP_OVERHEAD > limit:
        raise PathError(
            f"{what}: the name {path.name[:24]!r}... is {size} bytes; zsvss writes it through a "
            f"temp name {TEMP_OVERHEAD} bytes longer and this file system allows {limit}: use "
            f"a name of at most {limit - TEMP_OVERHEAD} bytes"
        )


def check_output_folder(path: str | os.PathLike[str], flag: str = "--out", beside: bool = True):
    """``path`` can become an output folder: not a file, not a mount point (a published run
    renames it), a name that fits with its temp names, and the folder it is written in
    (``path``'s parent when ``beside``, as staging folders live beside the output; ``path``
    itself otherwise), or its nearest existing ancestor, is a writable folder."""
    path = Path(path)
    what = f"{flag} {path}"
    if path.is_symlink() and not path.exists():
        raise PathError(f"{what}: is a broken symbolic link")
    if path.exists() and not path.is_dir():
        raise PathError(f"{what}: is a file, not a folder")
    if beside:
        if path.is_dir() and os.path.ismount(path):
            raise PathError(
                f"{what}: is a mount point; zsvss replaces its output folder as a whole by "
                "renaming it, which a mount point refuses: use a folder inside it"
            )
        check_name_fits(path, what)
    where = _nearest_existing(path.parent if beside else path)
    if not where.is_dir():
        raise PathError(f"{what}: {where} is not a folder")
    _probe_write(where, what)


def _is_json(path: Path) -> bool:
    try:
        if path.stat().st_size > 64 * 2**20:
            return False
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def check_output_file(
    path: str | os.PathLike[str],
    flag: str = "--json",
    inputs: Iterable[str | os.PathLike[str]] = (),
    replaceable: Callable[[Path], bool] | None = _is_json,
    create_parent: bool = False,
) -> None:
    """``path`` can be written as a file: outside every input, not a folder, in an existing
    (or, with ``create_parent``, creatable), writable folder, a name that fits with its temp
    name, and, when it exists, a regular file that ``replaceable`` says zsvss may overwrite
    (default: a JSON file, as zsvss writes)."""
    path = Path(path)
    what = f"{flag} {path}"
    check_disjoint(path, inputs, flag)
    if path.is_dir():
        raise PathError(f"{what}: is a folder, not a file")
    parent = path.parent
    if create_parent:
        parent = _nearest_existing(parent)
    if not parent.exists():
        raise PathError(f"{what}: folder {parent} does not exist")
    if not parent.is_dir():
        raise PathError(f"{what}: {parent} is not a folder")
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_file():
            raise PathError(f"{what}: exists and is not a regular file; refusing to replace it")
        if replaceable is not None and not replaceable(path):
            raise InputError(
                f"{what}: exists and is not a file zsvss writes there; refusing to overwrite "
                "it (choose another name, or delete it first)"
            )
    check_name_fits(path, what)
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
    A symbolic link with such a name was not made by zsvss: the link itself is removed, what it
    points to is never touched. Returns the paths removed or restored.
    """
    target = Path(target)
    touched = []
    backups = [p for p in _leftovers(target, BACKUP_SUFFIX) if not p.is_symlink()]
    for backup in sorted(backups, key=lambda p: p.stat().st_mtime):
        if not target.exists() and not target.is_symlink():
            os.rename(backup, target)
            log.warning("%s: restored the previous output from %s (a cut publish)", target, backup)
        else:
            _remove(backup)
        touched.append(backup)
    for leftover in _leftovers(target, ".tmp") + _leftovers(target, BACKUP_SUFFIX):
        if leftover.exists() or leftover.is_symlink():
            _remove(leftover)
            touched.append(leftover)
    return touched


def output_files(folder: str | os.PathLike[str]) -> list[str]:
    """Every file under ``folder`` as a sorted relative POSIX path, temp files left out: what
    a manifest lists so a later run knows which files are zsvss's."""
    folder = Path(folder)
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if not is_temp_file(path):
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


def _listed(manifest: Path) -> set[str] | None:
    try:
        if manifest.is_symlink() or not manifest.is_file():
            return None
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def check_replaceable(target: str | os.PathLike[str], manifest: str) -> None:
    """``target`` is absent, empty, or a zsvss output: every file in it, at any depth, is its
    ``manifest`` (a JSON file with a ``files`` list) or listed there, or a temp file.

    A lock of another live run found on the way is an :class:`OutputOverlapError` (``target``
    contains that run's output); anything else unlisted is an :class:`InputError`.
    """
    target = Path(target)
    if not target.is_dir():
        return
    listed: set[str] | None = None
    for root, dirs, names in os.walk(target):
        here = Path(root)
        for name in names + [d for d in dirs if (here / d).is_symlink()]:
            match = _LOCK_NAME.match(name)
            holder = live_holder(here / name) if match else None
            if holder is not None:
                raise OutputOverlapError(
                    f"{target}: contains {here / match.group(1)}, the output of another live "
                    f"zsvss run ({describe_holder(holder)}); refusing to replace it"
                )
        for name in sorted(names + [d for d in dirs if (here / d).is_symlink()]):
            path = here / name
            rel = path.relative_to(target).as_posix()
            if is_temp_file(path) and path.is_file() and not path.is_symlink():
                continue
            if listed is None:
                listed = _listed(target / manifest) or set()
            if rel == manifest and not path.is_symlink():
                continue
            if rel not in listed or path.is_symlink() or not path.is_file():
                why = f"its {manifest} does not list it" if listed else f"no {manifest} lists it"
                raise InputError(
                    f"{target}: holds {rel!r}, which zsvss did not write ({why}); refusing to "
                    "replace the folder (choose a new or empty output folder)"
                )


_DEFERRED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))


@contextlib.contextmanager
def _signals_held() -> Iterator[set[int]]:
    """Hold SIGINT and SIGTERM back for the block; yields the set of those that arrived
    meanwhile. The Python handlers are swapped for a recorder (they run in the main thread
    whichever thread the kernel picked, which a signal mask cannot promise); outside the main
    thread nothing is held."""
    got: set[int] = set()
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    old = {sig: signal.getsignal(sig) for sig in _DEFERRED}
    for sig, handler in old.items():
        if handler not in (signal.SIG_IGN, None):
            signal.signal(sig, lambda signum, _frame: got.add(signum))
    try:
        yield got
    finally:
        for sig, handler in old.items():
            if handler not in (signal.SIG_IGN, None):
                signal.signal(sig, handler)


def _after_publish(target: Path, signals: set[int]) -> None:
    """Deliver the interrupts held back during a publish, saying the output is complete."""
    for sig in signals:
        handler = signal.getsignal(sig)
        if handler == signal.SIG_IGN:
            continue
        if handler in (signal.SIG_DFL, None) and sig != signal.SIGINT:
            signal.raise_signal(sig)
        raise InterruptedAfterPublish(
            f"interrupted after {target} was published; the new output is complete"
        )


def check_publishable(target: str | os.PathLike[str]) -> None:
    """An existing output folder can be renamed away, as publishing it will (rename it to a
    backup name and back, under the lock): an immutable folder or a mount point fails now,
    not after the whole run."""
    target = Path(target)
    if not target.is_dir() or target.is_symlink():
        return
    if os.path.ismount(target):
        raise PathError(
            f"{target}: is a mount point; zsvss replaces its output folder as a whole by "
            "renaming it, which a mount point refuses: use a folder inside it"
        )
    probe = target.with_name(f".{target.name}.{secrets.token_hex(6)}{BACKUP_SUFFIX}")
    with _signals_held() as got:
        try:
            os.rename(target, probe)
        except OSError as err:
            raise PathError(
                f"{target}: cannot be replaced ({os_problem(err)}); zsvss publishes a run by "
                "renaming the previous output away"
            ) from err
        os.rename(probe, target)  # a kill between the two: recover() restores it
        held = set(got)
    if held:
        _after_publish(target, held)


def publish(staging: Path, target: Path) -> None:
    """Make ``staging`` the folder ``target``, replacing the previous one as a whole.

    SIGINT and SIGTERM wait while the renames run; one that came meanwhile is raised after
    them as :class:`InterruptedAfterPublish` (the new output is in place and complete).
    """
    backup = target.with_name(f".{target.name}.{secrets.token_hex(6)}{BACKUP_SUFFIX}")
    with _signals_held() as got:
        if not target.exists():
            os.rename(staging, target)
            backup = None
        else:
            os.rename(target, backup)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(backup, target)
                raise
        held = set(got)
    try:
        if backup is not None:
            _remove(backup)
    except KeyboardInterrupt:
        held.add(signal.SIGINT)
    if held:
        _after_publish(target, held)


def _write_failure(target: Path, err: OSError) -> PathError:
    cause = err
    while isinstance(cause, PathError) and isinstance(cause.__cause__, OSError):
        cause = cause.__cause__
    return PathError(f"{target}: cannot write the outputs ({os_problem(cause)})")


def _output_target(target: str | os.PathLike[str], follow: bool) -> Path:
    path = Path(target)
    if path.is_symlink():
        if not follow:
            raise PathError(
                f"{path}: is a symbolic link; zsvss never follows a link it did not create "
                "in a folder it writes: remove it"
            )
        path = Path(os.path.realpath(path))
    path = canonical(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"{path}: is a file, not a folder")
    return path


@contextlib.contextmanager
def staged_output(
    target: str | os.PathLike[str], manifest: str, follow: bool = True
) -> Iterator[Path]:
    """Yield an empty staging folder for output folder ``target``; publish it on success.

    Holds ``target``'s claim throughout (:func:`claim_output`, reused when the caller holds
    it), cleans what killed runs left (:func:`recover`) and refuses a ``target`` holding files
    its ``manifest`` does not list (:func:`check_replaceable`), again right before publishing.
    ``follow``: a ``target`` that is a symbolic link is followed (the user's ``--out``) or
    refused (a folder inside an output). On any failure or interrupt the staging folder, and
    any parent folder created for it, is removed and ``target`` is left exactly as it was. A
    file-system failure while writing (the writers' :class:`PathError`, or a failed rename)
    is a :class:`PathError` naming ``target``.
    """
    target = _output_target(target, follow)
    with claim_output(target, check=lambda path: check_replaceable(path, manifest)):
        recover(target)
        check_replaceable(target, manifest)
        check_publishable(target)
        staging = temp_path(target)
        try:
            try:
                staging.mkdir()
            except OSError as err:
                raise _write_failure(target, err) from err
            yield staging
            check_replaceable(target, manifest)  # what publish replaces, checked again now
            check_not_inside_live_output(target)
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
