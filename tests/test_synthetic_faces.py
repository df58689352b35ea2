"""Tests for the embedded `synthetic_faces` data: renderer, truthful labels, TFDS builder, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_prep import render_synthetic_faces
from facegan_jax.data import face_renderer as fr
from facegan_jax.data import synthetic_faces as sf
from facegan_jax.data.celeba_attributes import CELEBA_ATTRIBUTES

# Enough faces that every drawn attribute appears both on and off.
NUM_LAYER_FACES = 64
LAYER_RESOLUTION = 64


@pytest.fixture(scope="module")
def layered_faces() -> list[tuple[np.ndarray, dict[str, bool], dict[str, np.ndarray]]]:
    return [fr.render_face_layers(7, i, LAYER_RESOLUTION) for i in range(NUM_LAYER_FACES)]


def render_face(seed: int, index: int, resolution: int) -> tuple[np.ndarray, dict[str, bool]]:
    """One face rendered alone (a batch of one), with its attributes by CelebA name."""
    images, attrs = fr.render_faces(seed, [index], resolution)
    return images[0], dict(zip(CELEBA_ATTRIBUTES, attrs[0].tolist()))


def _present(mask: np.ndarray, min_pixels: float = 2.0) -> bool:
    """A part is present when its visible coverage adds up to a few whole pixels."""
    return float(mask.sum()) >= min_pixels


def test_same_seed_and_index_give_identical_bytes_other_indices_differ():
    image, attrs = render_face(3, 11, 32)
    again, attrs_again = render_face(3, 11, 32)
    assert image.tobytes() == again.tobytes()
    assert attrs == attrs_again
    assert not np.array_equal(image, render_face(3, 12, 32)[0])
    assert not np.array_equal(image, render_face(4, 11, 32)[0])


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_batched_rendering_equals_one_by_one(resolution):
    # Faces share a batch's feature windows; each must still be exactly its own render.
    count = 12 if resolution < 128 else 3
    images, attrs = fr.render_faces(5, range(100, 100 + count), resolution)
    for k in range(count):
        image, attributes = render_face(5, 100 + k, resolution)
        np.testing.assert_array_equal(images[k], image)
        assert attrs[k].tolist() == [attributes[n] for n in CELEBA_ATTRIBUTES]


def test_feature_windows_never_clip_a_part(monkeypatch):
    # Parts are drawn only inside bounding windows; drawing on the whole canvas must agree.
    indices = range(200, 232)
    windowed, _ = fr.render_faces(1, indices, 32)
    monkeypatch.setattr(
        fr._Canvas, "_slices", lambda self, *box: (slice(0, self.size), slice(0, self.size))
    )
    whole, _ = fr.render_faces(1, indices, 32)
    np.testing.assert_array_equal(windowed, whole)


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_shapes_and_dtypes(resolution):
    image, attrs, masks = fr.render_face_layers(0, 1, resolution)
    assert image.shape == (resolution, resolution, 3) and image.dtype == np.uint8
    assert set(masks) == set(fr.MASK_NAMES)
    for mask in masks.values():
        assert mask.shape == (resolution, resolution) and mask.dtype == np.float32
        assert mask.min() >= 0.0 and mask.max() <= 1.0
    # Some of the face's skin stays visible, even under hair, a beard and glasses.
    assert masks["face"].sum() > 0.05 * resolution**2
    assert list(attrs) == list(CELEBA_ATTRIBUTES)


def test_unsupported_resolution_names_the_config_field():
    with pytest.raises(ValueError, match=r"config\.data\.image_size"):
        render_face(0, 0, 48)
    with pytest.raises(ValueError, match=r"config\.data\.image_size"):
        sf.prepare_builder(96, 4, 2)


def test_all_40_attributes_present_and_undrawn_ones_false(layered_faces):
    undrawn = [n for n in CELEBA_ATTRIBUTES if n not in fr.DRAWN_ATTRIBUTES]
    assert len(undrawn) == 40 - len(fr.DRAWN_ATTRIBUTES)
    for _, attrs, _ in layered_faces:
        assert list(attrs) == list(CELEBA_ATTRIBUTES)
        assert all(isinstance(v, bool) for v in attrs.values())
        assert not any(attrs[n] for n in undrawn)


@pytest.mark.parametrize(
    ("attribute", "part"),
    [
        ("Eyeglasses", "eyeglasses"),
        ("Wearing_Hat", "hat"),
        ("Goatee", "goatee"),
        ("Mustache", "mustache"),
        ("Bangs", "bangs"),
        ("Mouth_Slightly_Open", "mouth_interior"),
        ("Rosy_Cheeks", "cheeks"),
        ("Wearing_Necktie", "necktie"),
    ],
)
def test_part_pixels_present_iff_attribute(layered_faces, attribute, part):
    seen = set()
    for _, attrs, masks in layered_faces:
        seen.add(attrs[attribute])
        if attrs[attribute]:
            assert _present(masks[part]), (attribute, float(masks[part].sum()))
        else:
            assert masks[part].max() == 0.0, attribute
    assert seen == {True, False}, f"{attribute} never varied over {NUM_LAYER_FACES} faces"


def test_eyeglasses_have_dark_thick_rims(layered_faces):
    for image, attrs, masks in layered_faces:
        if not attrs["Eyeglasses"]:
            continue
        luminance = image.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
        rim = (masks["eyeglasses"] > 0.95) & (luminance < 80)
        assert rim.sum() >= 40, rim.sum()  # two thick rims, a bridge and arms at 64x64


def test_beard_and_goatee_set_no_beard(layered_faces):
    kinds = set()
    for _, attrs, masks in layered_faces:
        beard, goatee = _present(masks["beard"]), _present(masks["goatee"])
        assert attrs["Goatee"] == goatee
        assert attrs["No_Beard"] == (not beard and not goatee)
        if beard or goatee:
            assert attrs["Male"]
        kinds.add((beard, goatee))
    assert {(True, False), (False, True), (False, False)} <= kinds


def test_bald_means_no_hair_pixels_and_no_hair_colour(layered_faces):
    colours = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
    seen_bald = False
    for _, attrs, masks in layered_faces:
        assert sum(attrs[c] for c in colours) <= 1
        if attrs["Bald"]:
            seen_bald = True
            assert masks["hair"].max() == 0.0
            assert not any(attrs[c] for c in colours)
            assert not attrs["Bangs"] and not attrs["Wearing_Hat"]
        else:
            assert masks["hair"].sum() > 20.0  # hair shows, even from under a hat
    assert seen_bald


def test_hair_colour_attribute_matches_hair_pixels(layered_faces):
    seen = set()
    for image, attrs, masks in layered_faces:
        hair = image[masks["hair"] > 0.95].astype(np.float32)  # [P, 3]
        if attrs["Bald"] or len(hair) == 0:
            continue
        r, g, b = np.median(hair, axis=0)
        lum = 0.299 * r + 0.587 * g + 0.114 * b
        if attrs["Black_Hair"]:
            assert lum < 45, (r, g, b)
        elif attrs["Blond_Hair"]:
            assert lum > 150 and r - b > 60, (r, g, b)
        elif attrs["Brown_Hair"]:
            assert 45 < lum < 120 and r - b > 30, (r, g, b)
        elif attrs["Gray_Hair"]:
            assert lum > 120 and abs(r - b) < 15, (r, g, b)
        seen.update(n for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair") if attrs[n])
    assert seen == {"Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"}


def _mouth_geometry(mask: np.ndarray) -> tuple[int, float]:
    """Width in pixels of a mouth mask, and how far its corners sit above its centre."""
    cols = np.nonzero(mask.max(axis=0) > 0.5)[0]
    width = int(cols[-1] - cols[0] + 1)
    rows = np.arange(mask.shape[0], dtype=np.float32)[:, None]

    def centroid(c0: int, c1: int) -> float:
        part = mask[:, c0:c1]
        return float((part * rows).sum() / part.sum())

    edge = max(1, width // 6)
    corners = 0.5 * (
        centroid(cols[0], cols[0] + edge) + centroid(cols[-1] - edge + 1, cols[-1] + 1)
    )
    mid = cols[0] + width // 2
    return width, centroid(mid - edge, mid + edge) - corners


def test_smiling_mouth_is_wide_and_curves_up(layered_faces):
    widths = {True: [], False: []}
    for index, (image, attrs, masks) in enumerate(layered_faces):
        width, lift = _mouth_geometry(masks["mouth"] + masks["mouth_interior"])
        face_width = fr.sample_face_params(7, index)["a"] * LAYER_RESOLUTION  # 2a in pixels
        widths[attrs["Smiling"]].append(width / face_width)
        if attrs["Smiling"]:
            assert lift > 0.5, (index, lift)  # corners above the centre: a smile
            if attrs["Mouth_Slightly_Open"]:
                teeth = image[masks["mouth_interior"] > 0.9].min(axis=-1) > 200
                assert teeth.sum() >= 3  # white teeth show
        else:
            assert abs(lift) < 0.25, (index, lift)  # straight
    # Smiles span about half the face, neutral mouths about a quarter.
    assert min(widths[True]) > 0.4 > 0.3 > max(widths[False]), widths


def test_attribute_frequencies_are_balanced():
    attrs = [fr.face_attributes(fr.sample_face_params(0, i)) for i in range(400)]
    for name, low, high in [
        ("Eyeglasses", 0.2, 0.8),
        ("Smiling", 0.2, 0.8),
        ("Male", 0.3, 0.7),
        ("Mouth_Slightly_Open", 0.2, 0.8),
        ("Wearing_Hat", 0.1, 0.4),
    ]:
        freq = np.mean([a[name] for a in attrs])
        assert low <= freq <= high, (name, freq)
    # render_face reports exactly these attributes.
    assert render_face(0, 3, 32)[1] == attrs[3]


def test_prepare_builder_writes_tfds_that_reads_back_the_rendered_faces(tmp_path):
    builder = sf.prepare_builder(32, 16, 8, seed=2, data_dir=str(tmp_path))
    assert builder.name == "synthetic_faces"
    assert builder.builder_config.name == "r32_n16_8_s2"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": 16,
        "validation": 8,
        "test": 8,
    }
    features = builder.info.features
    assert features["image"].shape == (32, 32, 3)
    assert list(features["attributes"].keys()) == list(CELEBA_ATTRIBUTES)

    split_images = {}
    for split, count in [("train", 16), ("validation", 8), ("test", 8)]:
        expected, expected_attrs = fr.render_faces(2, sf.split_indices(split, count), 32)
        by_bytes = {img.tobytes(): row for img, row in zip(expected, expected_attrs.tolist())}
        got = list(builder.as_dataset(split=split).as_numpy_iterator())
        assert len(got) == count
        for example in got:
            assert example["image"].dtype == np.uint8
            row = by_bytes[example["image"].tobytes()]  # KeyError: not a face we rendered
            assert [bool(example["attributes"][n]) for n in CELEBA_ATTRIBUTES] == row
        split_images[split] = set(by_bytes)
        assert len(split_images[split]) == count
    assert not split_images["train"] & split_images["validation"]
    assert not split_images["validation"] & split_images["test"]

    # A second call reuses the prepared files instead of rendering again.
    files = sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*.tfrecord*"))
    again = sf.prepare_builder(32, 16, 8, seed=2, data_dir=str(tmp_path))
    assert again.is_prepared()
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.rglob("*.tfrecord*")) == files


def test_prepare_builder_rejects_empty_splits():
    with pytest.raises(ValueError, match=r"config\.data\.synthetic_num_train"):
        sf.prepare_builder(32, 0, 8)
    with pytest.raises(ValueError, match=r"config\.data\.synthetic_num_eval"):
        sf.prepare_builder(32, 8, 0)


@pytest.mark.parametrize(("num", "cols", "rows"), [(6, 3, 2), (5, None, 2)])
def test_render_cli_writes_a_preview_png_of_the_requested_grid(tmp_path, num, cols, rows):
    out = tmp_path / "preview" / "grid.png"
    argv = ["--out", str(out), "--resolution", "32", "--num", str(num), "--start", "4"]
    assert render_synthetic_faces.main(argv + (["--cols", str(cols)] if cols else [])) == 0
    grid = np.asarray(Image.open(out))
    cols = cols or 3  # near-square by default
    pad = 2  # sampling.make_grid's border between cells
    assert grid.shape == (rows * (32 + pad) + pad, cols * (32 + pad) + pad, 3)
    # Cell (row 1, col 0) holds face start + cols, rendered exactly as the dataset renders it.
    y, x = pad + (32 + pad), pad
    np.testing.assert_array_equal(grid[y : y + 32, x : x + 32], render_face(0, 4 + cols, 32)[0])


def test_render_cli_rejects_an_empty_grid(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        render_synthetic_faces.main(["--out", str(tmp_path / "g.png"), "--num", "0"])
    assert exit_info.value.code == 2
    assert "--num must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_face_renderer_imports_and_renders_without_tensorflow():
    code = (
        "import sys\n"
        "from facegan_jax.data import face_renderer\n"
        "face_renderer.render_faces(0, [0], 32)\n"
        "assert 'tensorflow' not in sys.modules, 'face_renderer imported tensorflow'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
