"""facegan_jax: GANs that generate faces (CelebA and the embedded synthetic_faces), in JAX/Flax.

Importing the package sets, for every entry point alike, the XLA:CPU
convolution flag of `runtime.configure_xla_cpu` (no effect if a JAX backend
already started, or if the user set that flag) and one JAX option, so that
seeded results agree between training, sampling, tests and benchmarks:
`jax_threefry_partitionable=False`. With the (newer) partitionable threefry,
XLA:CPU takes 4-5x longer to compile each 4-D random draw (every conv-kernel
initialiser and dropout mask), which dominated start-up on 2 cores; our random
arrays are small and replicated, so the partitionable variant buys nothing.
"""

import jax as _jax

from facegan_jax import runtime as _runtime

_jax.config.update("jax_threefry_partitionable", False)
# Before any JAX backend starts: Eigen instead of YNNPACK convolutions on XLA:CPU
# (see runtime.py). Every entry point, the tests and notebooks get the same kernels.
_runtime.configure_xla_cpu()

__version__ = "0.1.0"
