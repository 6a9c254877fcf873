"""Atomic file writes, stale partial files and folder locks: a reader never sees half a file.

Every writer of the suite writes to a temporary name beside the target (same file system, so the final
``os.replace`` is atomic) and removes it on failure; the command line turns SIGTERM into an exception so that this
clean-up also runs when a job is cancelled or times out. A process killed outright (SIGKILL, power loss) leaves its
partial file behind: the name records the writer's host and process id, and the next write of the same target
removes the partial files of processes that no longer run on this host.

``folder_lock`` keeps two processes from writing one folder (a store, a run) at once; the lock is the kernel's
(``flock``), so it is released however its holder ends and never goes stale (a lock file left by a killed holder
is locked again by the next process).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
# "<pid>-<tag>" (older writers) or "<pid>-<tag>-<host>" between ".<target name>." and ".partial"
_PARTIAL = re.compile(r"(?P<pid>\d+)-[0-9a-f]{8}(?:-(?P<host>[A-Za-z0-9-]+))?\.partial")
LOCK_NAME = ".lock"


class FolderLockedError(RuntimeError):
    """Another process holds the folder's lock (the message names the folder and the holder)."""


def partial_path(path: Path | str) -> Path:
    """Unique temporary name beside ``path``, naming this process; it keeps the real suffixes (".nii.gz", ".png")
    for writers that infer the format from the name."""
    path = Path(path)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{_HOST}"
    return path.with_name(f".{path.name}.{tag}.partial{''.join(path.suffixes)}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale_partials(path: Path | str) -> None:
    """Remove the partial files of ``path`` left by dead processes of this host.

    Partial files of live processes, and of other hosts (whose processes cannot be checked from here), stay.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    prefix = f".{path.name}."
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.partial*"):
        match = _PARTIAL.match(candidate.name[len(prefix):])
        if match is not None and (match["host"] or _HOST) == _HOST and not _process_alive(int(match["pid"])):
            candidate.unlink(missing_ok=True)


def write_atomic(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, then move the file into place; nothing is left behind on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(path)
    tmp = partial_path(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _acquire(lock: Path, what: str) -> int:
    """An open descriptor of ``lock`` holding its exclusive flock. A lock file that its previous holder removed
    between our open and our flock is not the lock any more: the new one is opened instead."""
    while True:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed by a holder leaving it empty: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise FolderLockedError(f"{lock.parent}: in use by {holder}; {what} needs it alone. Wait for that "
                                    "process to end (its lock goes with it), or write elsewhere") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path | str, what: str) -> Iterator[Path]:
    """Hold ``folder``'s lock while the block runs (``what``: the work, for the message of a refused lock).

    A second process asking for a held lock fails at once with ``FolderLockedError`` naming the folder and the
    holder; it does not wait, since its work would be overwritten by the holder's (or overwrite it). The lock file
    goes when the block ends, and the folder too if the lock made it and the block left it empty.
    """
    folder = Path(folder)
    made = not folder.exists()
    lock = folder / LOCK_NAME
    fd = _acquire(lock, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        yield folder
    finally:
        lock.unlink(missing_ok=True)  # while holding it: a waiter that opened it sees the change and retries
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):  # not empty, or already gone
                folder.rmdir()
