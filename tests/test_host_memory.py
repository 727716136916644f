"""host_memory.reuse_freed_memory: a large buffer freed and allocated again reuses its
pages (no fresh page faults), unless the user's environment tunes malloc. Each case runs
in a fresh interpreter: malloc's settings are per process and cannot be put back."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="only glibc's malloc is tuned"
)

# 64 MiB blocks (larger than any glibc mmap threshold) from malloc, as XLA's buffers are,
# each written in full: minor page faults per block after the first.
_PROBE = """
import ctypes, json, resource
from sdn_jax import host_memory
tuned = host_memory.reuse_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def block():
    pointer = libc.malloc(64 << 20)
    ctypes.memset(pointer, 1, 64 << 20)
    libc.free(pointer)
block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    block()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def _probe(**env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_buffers_are_reused():
    result = _probe()
    assert result["tuned"] is True
    assert result["faults"] < 100  # 16,384 pages per block fault without it


def test_the_users_malloc_settings_win():
    result = _probe(GLIBC_TUNABLES="")
    assert result["tuned"] is False
    assert result["faults"] > 10_000  # glibc's default: a fresh mmap for every block
