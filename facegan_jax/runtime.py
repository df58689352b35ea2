"""Process set-up every entry point calls first: `runtime.setup()`.

Nothing here runs on import. `setup()` must run before JAX starts a backend
(the first `jax.devices()` or computation) and before TensorFlow touches a
device; CLIs call it at the top of `main`, the tests' conftest calls it once.
It sets:

* the XLA:CPU convolution flag (`CPU_CONV_FLAG`): XLA:CPU sends convolutions
  to YNNPACK by default (jax 0.10); for our layers Eigen's convolutions are
  2-7x faster (per-layer profile: `python -m facegan_jax.benchmark --only=layers`).
  A user's own XLA_FLAGS setting of the same flag wins.
* `jax_threefry_partitionable=False`: with the partitionable threefry, XLA:CPU
  takes 4-5x longer to compile each 4-D random draw (every conv-kernel
  initialiser and dropout mask), which dominated start-up on 2 cores. Every
  entry point sets the same value, so seeded results agree between training,
  sampling, tests and benchmarks.
* TensorFlow sees no GPU or TPU (JAX owns the accelerators; tf.data and TFDS
  run on the host CPU).
* with `setup(keep_memory=True)` (the train and benchmark commands: long runs of
  one compiled step), glibc's malloc keeps freed memory for reuse
  (`keep_freed_memory`): by default every buffer over 32 MB is a fresh mapping,
  returned to the kernel when freed, so XLA's per-step temporaries are
  page-faulted and zeroed again on every step (DCGAN-64 on 2 cores: 61,000 page
  faults and 100 ms of kernel time per 650 ms step; with it: 2,500 and 7 ms, the
  step 2-5% faster). Its one arena makes compile-heavy short commands slower (the
  tests 20-25%: XLA's compiler threads then share one allocator lock), so the
  other commands leave malloc as it is. `FACEGAN_MALLOC=system` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
MALLOC_ENV = "FACEGAN_MALLOC"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8

_done = False


def configure_xla_cpu() -> None:
    """Adds `CPU_CONV_FLAG` to XLA_FLAGS unless the user set that flag already."""
    flags_now = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags_now:
        os.environ["XLA_FLAGS"] = f"{flags_now} {CPU_CONV_FLAG}".strip()


def keep_freed_memory() -> bool:
    """Makes glibc's malloc serve large blocks from one heap and keep what is freed.

    One arena (`M_ARENA_MAX`), no private mappings (`M_MMAP_MAX` 0) and no trimming
    below 2 GiB (`M_TRIM_THRESHOLD`): a buffer freed after one step is reused by the
    next without page faults. The process's peak memory is unchanged; it is simply
    not handed back between steps. Must run before other threads allocate (first
    thing in `setup`). Returns False where there is no glibc (musl, macOS) or the
    user set `FACEGAN_MALLOC=system`.
    """
    if os.environ.get(MALLOC_ENV, "") == "system":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(param, value) == 1 for param, value in settings)


def hide_accelerators_from_tensorflow() -> None:
    """Makes TensorFlow see no GPU/TPU so it does not reserve accelerator memory (JAX owns it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        # RuntimeError: devices already initialised; ValueError: no such device type.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], kind)


def setup(*, tensorflow: bool = True, keep_memory: bool = False) -> None:
    """Configures XLA, JAX's PRNG and TensorFlow for this process (idempotent).

    Args:
      tensorflow: also hide accelerators from TensorFlow (imports it; pass False
        in tools that never touch tf.data).
      keep_memory: `keep_freed_memory` (for long runs of one compiled step).
    """
    global _done
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not _done:
        if keep_memory:
            keep_freed_memory()
        configure_xla_cpu()
        import jax

        jax.config.update("jax_threefry_partitionable", False)
        _done = True
    if tensorflow:
        hide_accelerators_from_tensorflow()
