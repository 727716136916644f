"""A persistent XLA compilation cache for the commands, so that a rerun, an evaluation
or a file command loads the programs an earlier one compiled instead of compiling them.

Where: `$JAX_COMPILATION_CACHE_DIR` when set (JAX's own variable; set it empty to turn
the cache off), else `<user cache>/sdn_jax/xla` (`$XDG_CACHE_HOME` or ~/.cache). Every
program is kept, however quickly it compiled (start-up is many small programs), unless
`$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` says otherwise. Nothing is evicted (JAX's
size limit needs the `filelock` package): deleting the folder is always safe. A folder
that cannot be written turns the cache off with one warning (JAX would warn at every
program).
"""

import logging
import os
from pathlib import Path

import jax

log = logging.getLogger("sdn_jax")

DIRECTORY_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


def user_cache_dir() -> Path:
    """sdn_jax's folder in the user's cache ($XDG_CACHE_HOME, else ~/.cache)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "sdn_jax"


def enable() -> str | None:
    """Turns the cache on (module doc) before anything compiles; returns its folder, or
    None when it is off."""
    if DIRECTORY_VARIABLE in os.environ:  # JAX read it at import: its choice stands
        return os.environ[DIRECTORY_VARIABLE] or None
    path = str(user_cache_dir() / "xla")
    try:
        os.makedirs(path, exist_ok=True)
        writable = os.access(path, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        log.warning("Cannot write %s: compiled programs are not kept", path)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
