"""Files that a reader never sees half written: reports, caches, pictures, manifests."""

import contextlib
import os
import shutil
import tempfile


def _umask() -> int:
    """The process's umask: from /proc on Linux (reading it elsewhere means setting it,
    briefly, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


# What open() would give a new file (mkstemp makes it private, 0600), read once at import.
_NEW_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def written_atomically(path, mode: str = "wb", *, overwrite: bool = True):
    """Yields a new file beside `path`; when the block ends without error it is synced and
    renamed over `path`, else removed. The temporary name is unique and created
    exclusively (mkstemp: O_CREAT | O_EXCL), so two writers, or a file or symlink already
    lying at a guessable name, cannot mix into the result or redirect it.

    overwrite=False: an existing `path` (a file, a folder or a symlink, even a broken one)
    raises FileExistsError and is left as it is; the file appears in one step (a hard
    link), so it is never replaced by a race either.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                                     suffix=".tmp")  # fmt: skip
    try:
        os.fchmod(fd, _NEW_FILE_MODE)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            _publish_new(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _publish_new(temporary: str, path: str) -> None:
    """Gives the finished `temporary` the name `path` unless that name exists."""
    try:
        os.link(temporary, path)  # EEXIST if path exists (symlinks are not followed)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: an exclusive copy instead
        with open(temporary, "rb") as source:
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
            with os.fdopen(target, "wb") as f:
                shutil.copyfileobj(source, f)
                f.flush()
                os.fsync(f.fileno())
    os.unlink(temporary)
