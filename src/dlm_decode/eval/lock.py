"""One run at a time per results directory.

:func:`claim_out_dir` holds an exclusive ``flock`` on ``DIR/.dlm-decode.lock`` for a whole ``eval`` or ``ablate``
(the ranks of one launcher job share it through rank 0), so a second run started on the same directory is refused
instead of decoding every example again and appending it twice. While it is held the file names its holder
(command, process id, host, start time); the run removes it when it ends, so a finished directory holds only its
results. The lock goes with the process that holds it, even one that is killed (a killed run leaves the file
behind, naming a holder that no longer holds it: the next run takes the lock and rewrites it).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from dlm_decode.errors import InputError

logger = logging.getLogger(__name__)

#: The lock file of a results directory.
LOCK = ".dlm-decode.lock"


@contextlib.contextmanager
def claim_out_dir(out: Path, ranks, command: str) -> Iterator[None]:
    """Create ``out`` and hold its lock for the block: rank 0 does both and tells every rank whether it could.

    :param ranks: :class:`~dlm_decode.distributed.Ranks` of this process.
    :param command: what holds the lock (``eval``, ``ablate``), recorded in the lock file for the error message.
    :raises InputError: on every rank, when ``out`` cannot be created or another process holds its lock.
    """
    from dlm_decode.distributed import broadcast_object

    with contextlib.ExitStack() as stack:
        problem = None
        if ranks.main:
            try:
                out.mkdir(parents=True, exist_ok=True)
                stack.enter_context(_locked(out / LOCK, command))
            except InputError as exc:
                problem = (exc.message, exc.fix)
            except OSError as exc:
                problem = (
                    f"--out {out} cannot be created ({exc.strerror})",
                    "pass a directory path that can be created",
                )
        problem = broadcast_object(problem, ranks)  # the other ranks wait for rank 0's answer, then all agree
        if problem is not None:
            raise InputError(*problem)
        yield


@contextlib.contextmanager
def _locked(path: Path, command: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) with its holder written into it, and remove it
    on release.

    Removing a lock file races with a process that opened it just before: that process could lock the removed file
    while a third one creates and locks a new one. So a lock counts only when ``path`` still names the file locked;
    otherwise the file is opened again.
    """
    try:
        import fcntl
    except ImportError:  # no flock on this platform (Windows): runs are not serialised
        yield
        return
    while True:
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise InputError(
                    f"--out {path.parent} is in use by another run ({holder}): two runs writing one "
                    "directory would each decode every example and record it twice",
                    fix="wait for that run to finish (it resumes where it stops), or pass another --out",
                ) from None
            handle.close()  # the file system has no flock
            path.unlink(missing_ok=True)
            logger.warning(
                "--out %s: its file system does not support flock (%s), so another run started on this "
                "directory would not be refused; start one run per directory",
                path.parent,
                exc.strerror,
            )
            yield
            return
        if _names(path, handle):
            break
        handle.close()  # the holder before us removed this file after we opened it: lock the current one
    with handle:
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.seek(0)
        handle.truncate()
        handle.write(f"dlm-decode {command}, pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still locked, so no other run can have taken this file meanwhile


def _names(path: Path, handle) -> bool:
    """Whether ``path`` is (still) the file open as ``handle``."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
