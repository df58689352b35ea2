"""Device mesh and shardings: one `'data'` axis, parameters replicated, batches sharded.

This replaced `pmap` (in maintenance mode since JAX 0.8): the train step is a
plain `jax.jit` whose inputs carry these shardings, and XLA inserts the
gradient all-reduces. Multi-host runs call `jax.distributed.initialize()` first
(see main.py); `jax.devices()` is then the global device list.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def create_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis name 'data'."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters, optimizer states and scalars: a full copy on each device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading (batch) axis split over 'data'."""
    return NamedSharding(mesh, PartitionSpec("data"))


def check_global_batch(
    global_batch: int, mesh: Mesh, field: str = "config.train.batch_size"
) -> int:
    """Validates a global batch against the mesh and process count.

    Returns:
      The per-process batch size.

    Raises:
      ValueError: naming `field` if the batch does not split evenly over devices.
    """
    n_dev = mesh.devices.size
    if global_batch % n_dev:
        raise ValueError(
            f"{field}={global_batch} must be divisible by the number of devices ({n_dev})"
        )
    return global_batch // jax.process_count()
