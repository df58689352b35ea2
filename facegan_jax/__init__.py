"""facegan_jax: GANs that generate faces (CelebA and the embedded synthetic_faces), in JAX/Flax.

Importing the package has no side effects; entry points call
`facegan_jax.runtime.setup()` first (see runtime.py).
"""

__version__ = "0.1.0"
