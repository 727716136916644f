"""One writer per workdir: `RUN/.lock`, held by `python -m sdn_jax.main` while it runs.

Two trainings on one workdir would both log every step, save checkpoints over each other
and leave one's config.json beside the other's weights. `fcntl.flock` is released by the
OS when the holder exits, however it exits (kill -9 included), so a stale lock cannot
block a restart. The holder writes its pid into the file for the refusal to name; the
file itself stays (removing it would let a third process lock a different file).
In a multi-process run process 0 takes it for the job (every process writes checkpoint
shards, but only process 0 decides to start), and the others learn the outcome from it.
"""

import contextlib
import errno
import fcntl
import os

LOCK_FILE = ".lock"


class WorkdirError(Exception):
    """The workdir cannot be used as asked; str() says why."""


class WorkdirBusy(WorkdirError):
    """Another process holds the workdir's lock; str() names it and its pid."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "a process whose pid it has not written yet"


def _open(path: str, read_only_ok: bool) -> tuple[int | None, bool]:
    """(fd, writable) of the lock file, creating it; (None, False) if it cannot be
    created and `read_only_ok` (a read-only run: nobody can be writing it there)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), True
    except OSError as error:
        if not read_only_ok or error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    try:  # flock needs no write access: a read-only run is still locked while evaluated
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
    except FileNotFoundError:
        return None, False


@contextlib.contextmanager
def held(workdir: str, *, read_only_ok: bool = False):
    """Holds `workdir`/.lock for the block, or raises WorkdirBusy at once (never waits).

    `read_only_ok`: for `--mode evaluate`, which must work on a run it may not write
    (only its eval/ folder): the lock is then taken on the existing file, or skipped if
    the run has none and none can be made.
    """
    path = os.path.join(workdir, LOCK_FILE)
    fd, writable = _open(path, read_only_ok)
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(
                f"{workdir} is in use by another sdn_jax.main ({_holder(fd)}, see {path}): "
                "one process writes a run at a time; wait for it to end or stop it"
            ) from None
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if writable:
                os.ftruncate(fd, 0)  # no stale pid for the next refusal to name
    finally:
        os.close(fd)  # releases the lock
