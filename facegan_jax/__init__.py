"""facegan_jax: GANs that generate faces (CelebA and the embedded synthetic_faces), in JAX/Flax.

Importing the package sets one JAX option for every entry point alike, so that
seeded results agree between training, sampling, tests and benchmarks:
`jax_threefry_partitionable=False`. With the (newer) partitionable threefry,
XLA:CPU takes 4-5x longer to compile each 4-D random draw (every conv-kernel
initialiser and dropout mask), which dominated start-up on 2 cores; our random
arrays are small and replicated, so the partitionable variant buys nothing.
"""

import jax as _jax

_jax.config.update("jax_threefry_partitionable", False)

__version__ = "0.1.0"
