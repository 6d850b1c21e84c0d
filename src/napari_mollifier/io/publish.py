"""One result is one unit: staged writes, one publish step, an advisory folder lock, leftovers of killed runs.

Every writer of the package goes through this module:

* :func:`folder_lock` -- an advisory lock (``fcntl.flock`` on the output folder itself, or on a hidden
  ``.mollifier.lock`` file where the file system cannot lock a folder, e.g. NFS) held while anything is written
  into the folder. A second writer (another process, or another thread) waits for it, at most
  :data:`LOCK_TIMEOUT_S` seconds (environment variable ``MOLLIFIER_LOCK_TIMEOUT``), and then fails with a
  :class:`~napari_mollifier.errors.MollifierOutputError` that names the folder.
* :func:`publish` -- the files of one result are written into a hidden staging folder ``.NAME.staging-*`` beside
  their final place; when all are complete a marker (``.complete``, listing them) is written into the staging
  folder and the files are moved into place with ``os.replace``, SIGINT and SIGTERM held back until the last move
  is done. The marker makes the moves one step: a run killed (SIGKILL, power cut) between two moves leaves a
  complete staging folder, and the next writer into the folder finishes the moves before doing anything else
  (:func:`recover_folder`), so a reader never gets a result that is half old and half new after that.
* :func:`recover_folder` -- run under the lock by every writer: completes marked staging folders, and removes
  unmarked ones and the ``.NAME.tmp-*`` / ``.NAME.old-*`` files of killed writers (they cannot belong to a live
  writer: a live writer holds the lock). What it did is returned, and reported as a warning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

from ..errors import MollifierOutputError, MollifierWarning
from ._common import _remove

__all__ = ["folder_lock", "locked_folder", "publish", "recover_folder", "defer_signals", "LOCK_TIMEOUT_S",
           "is_leftover"]

#: Seconds a writer waits for another writer of the same folder before giving up.
LOCK_TIMEOUT_S = float(os.environ.get("MOLLIFIER_LOCK_TIMEOUT", "120"))
COMPLETE = ".complete"
LOCK_FILE = ".mollifier.lock"
_LEFTOVER = re.compile(r"^\..+\.(staging|tmp|old)-[0-9a-f]{10}$")
_HELD: dict = {}
_HELD_GUARD = threading.Lock()


def is_leftover(name: str) -> bool:
    """Tell whether ``name`` is that of a staging folder, temporary or old file of this package's writers."""
    return bool(_LEFTOVER.match(name))


def pause(stage: str, received=None) -> None:
    """Pause the writer at ``stage`` when a test asks for it (test hook).

    With ``MOLLIFIER_TEST_PAUSE_AT=stage`` the writer says so on stderr and waits there
    (``MOLLIFIER_TEST_PAUSE_S`` seconds, default 30, or until a held-back signal arrives), so that tests can send
    a signal to a real process at each write stage. Does nothing otherwise.
    """
    if os.environ.get("MOLLIFIER_TEST_PAUSE_AT") != stage:
        return
    sys.stderr.write(f"mollifier-test: paused at {stage}\n")
    sys.stderr.flush()
    deadline = time.monotonic() + float(os.environ.get("MOLLIFIER_TEST_PAUSE_S", "30"))
    while time.monotonic() < deadline and not received:
        time.sleep(0.02)


class _Held:
    def __init__(self):
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd = None


def _try_flock(fd) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _open_lock(folder: str):
    """``(fd, how)``: the folder itself when it can be flock-ed, else the lock file inside it."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return fd
    except BlockingIOError:
        return fd  # lockable, someone holds it
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    return os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def folder_lock(folder, *, timeout: float | None = None):
    """Hold the advisory write lock of ``folder`` (which must exist); re-entrant within one thread.

    Raises :class:`~napari_mollifier.errors.MollifierOutputError` after ``timeout`` seconds (default
    :data:`LOCK_TIMEOUT_S`) when another writer holds it.
    """
    key = os.path.realpath(folder)
    timeout = LOCK_TIMEOUT_S if timeout is None else float(timeout)
    with _HELD_GUARD:
        held = _HELD.setdefault(key, _Held())
    busy = MollifierOutputError(
        f"another mollifier process is writing to {folder} (its lock was held for more than {timeout:g} s): "
        "wait for it to finish, or write elsewhere (--out)"
    )
    busy.errno = errno.EBUSY
    if not held.rlock.acquire(timeout=timeout if timeout > 0 else -1):
        raise busy
    try:
        if held.depth == 0 and os.name == "posix":
            fd = _open_lock(key)
            deadline = time.monotonic() + timeout
            while not _try_flock(fd):
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise busy
                time.sleep(0.05)
            held.fd = fd
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                os.close(held.fd)  # closing the descriptor releases the flock
                held.fd = None
    finally:
        held.rlock.release()


def _move(src: Path, dst: Path) -> None:
    """``os.replace`` for files; a folder (zarr) replaces an existing folder of the same name."""
    if src.is_dir() and not src.is_symlink():
        from ._common import _replace_dir

        _replace_dir(src, dst)
    else:
        os.replace(src, dst)


def recover_folder(folder) -> list[str]:
    """Finish or remove what killed writers left in ``folder`` (call it holding :func:`folder_lock`).

    A staging folder with its ``.complete`` marker is published (its remaining files moved into place); one
    without is removed, like ``.NAME.tmp-*`` and ``.NAME.old-*`` entries. Returns one sentence per entry.
    """
    folder = Path(folder)
    notes: list[str] = []
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return notes
    for name in entries:
        if not is_leftover(name):
            continue
        path = folder / name
        kind = _LEFTOVER.match(name).group(1)
        marker = path / COMPLETE
        if kind == "staging" and marker.is_file():
            names = [n for n in marker.read_text().splitlines() if n and "/" not in n and n not in (".", "..")]
            moved = []
            for n in names:
                if (path / n).exists() or (path / n).is_symlink():
                    _move(path / n, folder / n)
                    moved.append(n)
            _remove(path)
            notes.append(f"finished publishing {', '.join(names)} in {folder} (a run was killed while moving them "
                         f"into place; {len(moved)} of {len(names)} file(s) were still staged)")
        else:
            _remove(path)
            notes.append(f"removed {name} from {folder}: a leftover of an interrupted run")
    return notes


def _created_dirs(out: Path) -> list[Path]:
    """Return the folders ``out.mkdir(parents=True)`` would create, innermost last."""
    missing = []
    p = out
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return list(reversed(missing))


def _remove_if_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def locked_folder(out, *, timeout: float | None = None):
    """Create ``out`` if needed, hold its lock and clear leftovers of killed writers; yield the notes.

    The leftovers cleared are reported as a :class:`~napari_mollifier.errors.MollifierWarning`. Folders this call
    created are removed again when the block fails and they are still empty.
    """
    out = Path(out)
    created = _created_dirs(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(out, timeout=timeout):
            notes = recover_folder(out)
            for note in notes:
                warnings.warn(note, MollifierWarning, stacklevel=3)
            yield notes
    except BaseException:
        _remove_if_empty(created)
        raise


@contextlib.contextmanager
def defer_signals():
    """Hold back SIGINT and SIGTERM inside the block (main thread only) and deliver them when it ends.

    Yields the list of held-back signal numbers.
    """
    received: list = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def hold(signum, frame):
        received.append(signum)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:  # noqa: SIM105 - explicit
            old[sig] = signal.signal(sig, hold)
        except (ValueError, OSError):
            pass
    try:
        yield received
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if received:
            sig = received[0]
            handler = old.get(sig)
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(sig)


def publish(out_dir, name: str, write, *, timeout: float | None = None) -> list[Path]:
    """Write one result as one unit and return the published paths.

    ``write(staging_folder)`` writes its files into a hidden staging folder and returns their names in publishing
    order (the one naming the others last); they are then moved into ``out_dir`` in one step (module docstring).

    Any failure or interrupt before the moves removes the staging folder and leaves an older result of the same
    names as it was; a folder this call created is removed again if it stays empty.
    """
    out = Path(out_dir)
    with locked_folder(out, timeout=timeout):
        staging = out / f".{name}.staging-{uuid.uuid4().hex[:10]}"
        staging.mkdir()
        try:
            pause("staging")
            names = [str(n) for n in write(staging)]
            pause("staged")
            marker_tmp = staging / (COMPLETE + ".tmp")
            with open(marker_tmp, "w") as fh:
                fh.write("\n".join(names) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(marker_tmp, staging / COMPLETE)
            with defer_signals() as received:
                pause("publishing", received)
                for i, n in enumerate(names):
                    _move(staging / n, out / n)
                    if i == 0:
                        pause("moving", received)
                try:
                    dir_fd = os.open(out, os.O_RDONLY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
                except OSError:
                    pass
            pause("published")
        finally:
            _remove(staging)
    return [out / n for n in names]
