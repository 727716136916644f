"""Files that a reader never sees half written: reports, caches, pictures."""

import contextlib
import os
import tempfile


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# What open() would give a new file (mkstemp makes it private, 0600). Read once, at
# import: os.umask can only be read by setting it.
_NEW_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def written_atomically(path, mode: str = "wb"):
    """Yields a new file beside `path`; when the block ends without error it is synced and
    renamed over `path`, else removed. The temporary name is unique (mkstemp), so two
    writers, or a file already lying at a guessable name, cannot mix into the result."""
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
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
