"""Process set-up shared by the CLIs: XLA:CPU flags, TensorFlow kept off accelerators.

`import facegan_jax` calls `configure_xla_cpu()` (it must run before JAX
initialises its backends: the first `jax.devices()` or computation). CLIs call
`hide_accelerators_from_tensorflow()` before TensorFlow touches a device.
"""

from __future__ import annotations

import contextlib
import os

# XLA:CPU sends convolutions to YNNPACK by default (jax 0.10); for the DCGAN
# layers Eigen's convolutions are 2-7x faster (profiled per layer, see
# models/fast_conv.py). Dots stay on YNNPACK. Only CPU compilation reads it; a
# user's own XLA_FLAGS setting of the same flag wins.
CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def configure_xla_cpu() -> None:
    """Adds `CPU_CONV_FLAG` to XLA_FLAGS unless the user set that flag already."""
    flags_now = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" not in flags_now:
        os.environ["XLA_FLAGS"] = f"{flags_now} {CPU_CONV_FLAG}".strip()


def hide_accelerators_from_tensorflow() -> None:
    """Makes TensorFlow see no GPU/TPU so it does not reserve accelerator memory (JAX owns it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        # RuntimeError: devices already initialised; ValueError: no such device type.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], kind)
