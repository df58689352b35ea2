"""facegan_jax: GANs that generate faces (CelebA and the embedded synthetic_faces), in JAX/Flax."""

__version__ = "0.1.0"
