"""The 40 CelebA attribute names, in the order of `list_attr_celeba.txt`.

This module owns the attribute vocabulary shared by every dataset we read
(TFDS `celeb_a`, our offline `celeba_local` builder and `synthetic_faces`) and by
the attribute-conditioned models: an attribute vector is always a float32
{0, 1} array of length 40 in this order.
"""

from __future__ import annotations

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
