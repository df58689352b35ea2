r"""HR-DCGAN on RGB 256x256 faces: configs/hrdcgan256_gray.py with 3 channels (seed 004).

The same network and training as the greyscale recipe (SELU + BatchNorm,
extra stride-1 convs, simultaneous G/D update); only the image channels differ.

  python -m facegan_jax.main --config=configs/hrdcgan256.py --workdir=runs/hrdcgan256

The data defaults to the embedded `synthetic_faces` (resized to 256 by the input
pipeline); on real CelebA add `--config.data.name=celeba_local`.

Smoke run: `--config=configs/hrdcgan256.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from facegan_jax.recipes import sibling

default = sibling(__file__, "default")
hrdcgan256_gray = sibling(__file__, "hrdcgan256_gray")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """HR-DCGAN 256x256 RGB; `variant='runlocal'` shrinks it to a smoke run (32x32)."""
    default.check_variant(variant, __file__)
    config = hrdcgan256_gray.get_config(variant)
    config.data.channels = 3
    return config
