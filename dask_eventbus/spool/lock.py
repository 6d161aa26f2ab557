"""The spool's lock: one owner (a scheduler's publisher) per directory."""

from __future__ import annotations

import fcntl
import os
import socket
import time

from ..config import ConfigError

LOCK = "spool.lock"


def lock_owner(path: str) -> str:
    """Who holds the spool's lock, as its lock file says (``pid N on host H``)."""
    try:
        with open(os.path.join(path, LOCK)) as f:
            pid, _, host = f.read().strip().partition(" ")
    except OSError:
        return "an unknown process"
    return f"pid {pid or '?'} on host {host or '?'}"


def acquire_lock(path: str, wait: float = 0.0) -> int:
    """Lock the spool directory for this process; the lock file's descriptor.

    Waits up to ``wait`` seconds for another owner to let go (a publisher
    process still closing), then raises :class:`ConfigError` naming it.
    """
    os.makedirs(path, exist_ok=True)
    fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ConfigError(
                    f"Invalid event bus config eventbus.spool.path = {path!r}: the spool is in "
                    f"use by another scheduler ({lock_owner(path)}); one spool directory "
                    "serves one scheduler at a time"
                ) from None
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def check_free(path: str, wait: float = 0.0) -> None:
    """Raise :class:`ConfigError` if another process owns the spool (lock, then let go)."""
    os.close(acquire_lock(path, wait))


def is_locked(path: str) -> bool:
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
