r"""The embedded `synthetic_faces` dataset: cartoon faces rendered procedurally, no download.

This module owns its TFDS builder (`SyntheticFaces`, one config per resolution,
split sizes and seed) and `prepare_builder`, which renders and stores a config
once. The faces themselves come from `facegan_jax.data.face_renderer`; a
preview grid is written by `python -m data_prep.render_synthetic_faces`.

The features match TFDS's `celeb_a` (`image`, `attributes`: CelebA's 40 names),
so one input pipeline reads both. Face `i` of a split is rendered from
`(seed, SPLIT_OFFSETS[split] + i)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import tensorflow as tf
import tensorflow_datasets as tfds

from facegan_jax.data import face_renderer
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES

# Index ranges of the splits: disjoint, and each split's images do not depend
# on the other splits' sizes.
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "validation": 2**32, "test": 2**33}

_DEFAULT_COUNTS = (12_000, 1_000)
# Faces rendered per call while generating a split (bounded memory, fast batches).
_GENERATE_CHUNK = 512


def config_name(resolution: int, num_train: int, num_eval: int, seed: int) -> str:
    """The BuilderConfig name of one rendering, e.g. 'r32_n12000_1000_s0'."""
    return f"r{resolution}_n{num_train}_{num_eval}_s{seed}"


def split_indices(split: str, count: int) -> range:
    """The face indices of the first `count` examples of a split, in example order."""
    return range(SPLIT_OFFSETS[split], SPLIT_OFFSETS[split] + count)


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
    """What to render: image size, split sizes and the seed.

    Attributes:
      resolution: image height and width (32, 64 or 128).
      num_train: faces in 'train'.
      num_eval: faces in each of 'validation' and 'test'.
      seed: dataset seed; face i of a split is rendered from (seed, offset + i).
    """

    resolution: int = 64
    num_train: int = _DEFAULT_COUNTS[0]
    num_eval: int = _DEFAULT_COUNTS[1]
    seed: int = 0


def _make_config(resolution: int, num_train: int, num_eval: int, seed: int) -> SyntheticFacesConfig:
    return SyntheticFacesConfig(
        name=config_name(resolution, num_train, num_eval, seed),
        description=(
            f"{resolution}x{resolution} faces; {num_train} train, {num_eval} validation, "
            f"{num_eval} test; seed {seed}"
        ),
        resolution=resolution,
        num_train=num_train,
        num_eval=num_eval,
        seed=seed,
    )


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
    """Procedurally rendered cartoon faces with CelebA's 40 attributes (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}  # noqa: RUF012 (TFDS reads a class dict)
    BUILDER_CONFIGS = [  # noqa: RUF012
        _make_config(r, *_DEFAULT_COUNTS, 0) for r in face_renderer.RESOLUTIONS
    ]
    DEFAULT_BUILDER_CONFIG_NAME = config_name(32, *_DEFAULT_COUNTS, 0)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.resolution
        return tfds.core.DatasetInfo(
            builder=self,
            # The first docstring line: stored in dataset_info.json, keep it unchanged.
            description=__doc__.splitlines()[0],
            # The same features as TFDS's celeb_a (less its landmarks): one pipeline reads both.
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "attributes": tfds.features.FeaturesDict(
                        {name: tf.bool for name in CELEBA_ATTRIBUTES}
                    ),
                }
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is rendered, nothing is downloaded
        return {split: self._generate_examples(split) for split in SPLIT_OFFSETS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        cfg = self.builder_config
        count = cfg.num_train if split == "train" else cfg.num_eval
        all_indices = split_indices(split, count)
        for start in range(0, count, _GENERATE_CHUNK):
            indices = all_indices[start : start + _GENERATE_CHUNK]
            images, attrs = face_renderer.render_faces(cfg.seed, indices, cfg.resolution)
            for index, image, row in zip(indices, images, attrs.tolist()):
                yield index, {"image": image, "attributes": dict(zip(CELEBA_ATTRIBUTES, row))}


def prepare_builder(
    resolution: int,
    num_train: int,
    num_eval: int,
    seed: int = 0,
    data_dir: str | None = None,
) -> tfds.core.DatasetBuilder:
    """Returns the `synthetic_faces` builder for these settings, rendering it if needed.

    Rendering happens once per (resolution, sizes, seed) and data_dir; later calls
    reuse the prepared files. Nothing is downloaded.

    Args:
      resolution: image size, from `config.data.image_size` (32, 64 or 128).
      num_train: faces in 'train' (`config.data.synthetic_num_train`).
      num_eval: faces in 'validation' and in 'test' (`config.data.synthetic_num_eval`).
      seed: dataset seed.
      data_dir: TFDS data_dir (`config.data.tfds_data_dir`); None means TFDS's default.

    Returns:
      A prepared builder; read it with `builder.as_dataset(split=...)`.
    """
    face_renderer.check_resolution(resolution)
    if num_train < 1:
        raise ValueError(f"config.data.synthetic_num_train must be >= 1, got {num_train}")
    if num_eval < 1:
        raise ValueError(f"config.data.synthetic_num_eval must be >= 1, got {num_eval}")
    if seed < 0:
        raise ValueError(f"synthetic_faces seed must be >= 0, got {seed}")
    name = config_name(resolution, num_train, num_eval, seed)
    # A predefined config must be asked for by name; TFDS rejects an equal custom one.
    config = (
        name
        if name in SyntheticFaces.builder_configs
        else _make_config(resolution, num_train, num_eval, seed)
    )
    builder = SyntheticFaces(config=config, data_dir=data_dir)
    if not builder.is_prepared():
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
        except Exception:
            # Several processes on one data_dir (multi-host on a shared disk) render at
            # once; the first to finish renames its folder into place and the others'
            # renames fail. Their data is identical: use the one that landed.
            builder = SyntheticFaces(config=config, data_dir=data_dir)
            if not builder.is_prepared():
                raise
    return builder
