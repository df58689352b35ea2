"""Data: the input pipeline (TFDS -> host crop/resize -> batches), the TFDS builders we own
(`synthetic_faces` with its renderer, `celeba_local`) and the CelebA attribute vocabulary."""
