r"""ACGAN 64x64 (the seed's widths) with the attribute-control options of acgan32_control.

The seed's network and optimiser (configs/acgan64.py) with `d_pool='flatten'`,
a separate plain-conv attribute tower, the attribute BCE summed over attributes
and D's attribute head trained on real faces only (see configs/acgan32_control.py
for why). Measured only at 32x32 on this project's 2-core CPUs; at 64x64 the
seed's widths cost ~15 GFLOP per training image.

  python -m facegan_jax.main --config=configs/acgan64_control.py --workdir=runs/acgan64_control

On real CelebA add `--config.data.name=celeba_local` (after data_prep.prepare_celeba).
Smoke run: `--config=configs/acgan64_control.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from facegan_jax.recipes import sibling

acgan32_control = sibling(__file__, "acgan32_control")
acgan64 = sibling(__file__, "acgan64")
default = sibling(__file__, "default")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """ACGAN-64 with attribute control; `variant='runlocal'` shrinks it to a smoke run."""
    default.check_variant(variant, __file__)
    return acgan32_control.apply_control_options(acgan64.get_config(variant))
