"""runtime.setup's process settings: glibc's malloc keeps freed memory for reuse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from facegan_jax import runtime
from tests.conftest import REPO_ROOT

# Allocates, touches and frees 64 MB twice through libc, and prints whether malloc was
# reconfigured and how many page faults the second round took.
_PROBE = """
import ctypes, resource
from facegan_jax import runtime
kept = runtime.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def touch_once():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
touch_once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_once()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(env_value: str | None) -> tuple[bool, int]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    if env_value is not None:
        env[runtime.MALLOC_ENV] = env_value
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_freed_blocks_are_reused_without_page_faults():
    kept, faults = _probe(None)
    assert kept
    assert faults < 1000  # 64 MB is 16,384 pages: reused, not mapped and faulted again
    # The system's default: a fresh mapping per large block, every page faulted again.
    kept, faults = _probe("system")
    assert not kept
    assert faults > 10_000
