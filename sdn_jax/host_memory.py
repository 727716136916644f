"""Keeps glibc from handing large freed buffers back to the OS between compiled calls.

XLA:CPU allocates each call's temporaries with malloc: 72 MB for the default train step.
glibc serves a block that large from a fresh mmap (a thread's arena cannot hold it) and
unmaps it when it is freed, so every step faulted in ~18,000 zeroed pages: 40 ms of
kernel time per step, 17% of the CPU time of training (docs/experiments.md, "Host
memory"). With one arena, no mmap and a high trim threshold, every step reuses the pages
of the one before.

`reuse_freed_memory()` is for programs, not libraries: the commands call it first thing,
before JAX starts its threads (an arena limit binds threads that have none yet). A user
who tunes malloc (MALLOC_* or GLIBC_TUNABLES in the environment) keeps their settings.
"""

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("sdn_jax")

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Freed memory at the heap's top is kept up to this size (glibc's default: 128 KiB,
# growing to 64 MiB), so a step's temporaries are still mapped at the next step.
TRIM_THRESHOLD = 1 << 30


def user_tuned() -> bool:
    """True when the environment already sets glibc's malloc (MALLOC_*_ or GLIBC_TUNABLES)."""
    return "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ)


def reuse_freed_memory() -> bool:
    """Tunes glibc's malloc as the module doc says; True if it did. A no-op (False) on
    other C libraries and where the user's environment tunes malloc."""
    if user_tuned():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    done = all(mallopt(parameter, value) == 1 for parameter, value in settings)
    if not done:
        log.warning("Could not tune malloc to reuse freed memory; steps will be slower")
    return done
