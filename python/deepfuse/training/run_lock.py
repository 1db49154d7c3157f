"""One run per run folder: ``run.lock`` in ``--out`` names the run that owns it (pid, host, start time).

The lock is an advisory ``flock`` on that file, held open for the run's lifetime: the kernel drops it when the
process ends in any way (exit, Ctrl-C, ``kill -9``), so a lock file left by a dead run is taken over, saying
so. A live owner's lock is refused, naming the owner. A lock file written on another host is not taken over
(a network file system may not share locks between hosts): the user removes it once that run is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "run.lock"


class RunFolderLocked(RuntimeError):
    """Another run owns the folder (the message names it)."""


class RunLock:
    """The lock of one run folder, held until ``release``."""

    def __init__(self, path: Path, handle: int) -> None:
        self.path, self._handle = path, handle

    def release(self) -> None:
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            self.path.unlink(missing_ok=True)  # before unlocking: nobody may lock a file about to disappear
        except OSError:
            pass  # a folder made read-only or removed meanwhile: the flock still goes with the handle
        finally:
            os.close(handle)  # closing drops the flock

    def __del__(self) -> None:  # a Run dropped without release (an API caller): the folder is free again
        with contextlib.suppress(Exception):  # at interpreter exit the modules may be gone already
            self.release()


def _owner(handle: int) -> dict:
    try:
        text = os.pread(handle, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "an unknown run (empty lock file)"
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}"


def acquire(folder: Path, log=print) -> RunLock:
    """Lock ``folder`` (which exists) for this process. Raises RunFolderLocked naming the owner, or OSError
    (PermissionError: the folder is not writable)."""
    path = folder / LOCK_NAME
    for _ in range(5):
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(handle)
            os.close(handle)
            raise RunFolderLocked(
                f"--out {folder} is in use by another run ({_describe(owner)}); wait for it to "
                "end, or choose another --out"
            ) from None
        try:
            if os.stat(path).st_ino != os.fstat(handle).st_ino:  # released and removed meanwhile: lock anew
                os.close(handle)
                continue
        except FileNotFoundError:
            os.close(handle)
            continue
        owner, host = _owner(handle), socket.gethostname()
        if owner and owner.get("host") != host:
            os.close(handle)
            raise RunFolderLocked(
                f"--out {folder} holds the lock of a run on host {owner.get('host')} "
                f"({_describe(owner)}); if that run is gone, delete {path}"
            )
        if owner:  # the flock was free: its writer is gone (even if its pid has been reused since)
            log(f"--out {folder}: taking over the lock of a run that ended without releasing it ({_describe(owner)})")
        me = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(handle, 0)
        os.pwrite(handle, (json.dumps(me) + "\n").encode(), 0)
        return RunLock(path, handle)
    raise RunFolderLocked(f"--out {folder}: could not lock {path} (other runs keep taking it)")


__all__ = ["LOCK_NAME", "RunFolderLocked", "RunLock", "acquire"]
