"""TFDS builders we own (`synthetic_faces`, `celeba_local`) and the CelebA attribute names."""
