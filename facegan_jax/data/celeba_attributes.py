"""The 40 CelebA attribute names, in the order of `list_attr_celeba.txt`.

This module owns the attribute vocabulary shared by every dataset we read
(TFDS `celeb_a`, our offline `celeba_local` builder and `synthetic_faces`) and by
the attribute-conditioned models: an attribute vector is always a float32
{0, 1} array of length 40 in this order; and which entries of a vector contradict
an attribute forced on or off (`conflict_table`, `conflicts`: what training's
`train.forced_conflicts` skips and what the control metric's consistent requests
resolve).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
NUM_ATTRIBUTES: int = len(CELEBA_ATTRIBUTES)
assert NUM_ATTRIBUTES == 40


def attribute_index(name: str) -> int:
    """Returns the position of a CelebA attribute, with a clear error if unknown."""
    try:
        return CELEBA_ATTRIBUTES.index(name)
    except ValueError:
        raise ValueError(
            f"unknown CelebA attribute {name!r}; valid names: {', '.join(CELEBA_ATTRIBUTES)}"
        ) from None


def conflict_table(pool: np.ndarray) -> np.ndarray:
    """P(B=1 | A=v) over real attribute vectors: float32 [2, 40, 40] indexed [v, A, B].

    Args:
      pool: real attribute vectors {0, 1} [P, 40] (a run's attribute pool).

    Returns:
      [v, a, b]: the fraction of vectors with attribute a equal to v that have b on;
      0.5 (no evidence either way) where no vector has a equal to v.
    """
    x = np.asarray(pool, np.float64) > 0.5  # [P, A]
    table = np.full((2, x.shape[1], x.shape[1]), 0.5)
    for v in (0, 1):
        rows = (x == v).astype(np.float64)  # [P, A]: which vectors have a == v
        count = rows.sum(axis=0)  # [A]
        together = rows.T @ x.astype(np.float64)  # [A, B]: a == v and b on
        seen = count > 0
        table[v, seen] = together[seen] / count[seen, None]
    return table.astype(np.float32)


def conflicts(table: Any, rate: float, attrs: Any, forced: Any) -> Any:
    """The entries of each request that contradict one of its forced attributes: bool [B, 40].

    Args:
      table: `conflict_table` [2, 40, 40].
      rate: an entry conflicts when its requested value has probability below this
        among real vectors with a forced attribute's value.
      attrs: requested attributes float {0, 1} [B, 40].
      forced: bool [B, 40], the entries that were asked for (one per row in training's
        balanced requests; any number in the sample command's).

    Returns:
      bool [B, 40] (a jax array); all False in rows with nothing forced, and never a
      forced entry (two asked-for entries that contradict each other both stay).
    """
    table, attrs, forced = jnp.asarray(table), jnp.asarray(attrs), jnp.asarray(forced, bool)
    on = attrs > 0.5  # [B, A]
    # [B, A, B']: P(b=1 | a at its requested value), then of b's requested value.
    p_on = jnp.where(on[:, :, None], table[1][None], table[0][None])
    p_requested = jnp.where(on[:, None, :], p_on, 1.0 - p_on)
    contradicted = jnp.any(forced[:, :, None] & (p_requested < rate), axis=1)  # [B, B']
    return contradicted & ~forced


def check_rate(rate: float, name: str) -> None:
    """Raises ValueError unless `rate` (the field or flag `name`) is a conflict rate: [0, 0.5).

    The one check of every setting that takes a rate for `conflicts` (training's
    `forced_conflicts` / `consistent_requests`, the control metric's and the sample
    command's consistent requests).
    """
    if not 0 <= rate < 0.5:
        raise ValueError(
            f"{name}={rate} must be in [0, 0.5) (a probability below which a request's entry "
            "contradicts the asked attribute; 0: off)"
        )


def resolve_conflicts(table: Any, rate: float, attrs: Any, forced: Any) -> Any:
    """`attrs` with each entry that `conflicts` names set to its likely value (a jax array).

    The one definition of a consistent request: training's `train.consistent_requests`,
    the control metric's `consistent` and the sample command's requests all use it.
    """
    attrs = jnp.asarray(attrs)
    return jnp.where(conflicts(table, rate, attrs, forced), 1.0 - attrs, attrs)
