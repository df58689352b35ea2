"""Pytest set-up shared by the suite: CPU-only JAX, quiet TF, shared data paths.

Tests that need the shared CelebA subset or the Inception fixture use the
`shared_data` / `inception_fixture_dir` fixtures. On a fresh clone without
`../shared/data` they skip with one line naming the missing folder; with
FACEGAN_REQUIRE_SHARED_DATA=1 (which `.ci/run` sets) they *fail* instead, so CI
cannot pass silently without the data.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Must run before jax / tensorflow are imported anywhere in the test session.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One CPU device in-process: fake multi-device XLA:CPU runs each device on the same
# 2-core thread pool, and a long step can starve one device past XLA's 40 s
# all-reduce rendezvous timeout (seen here, a hard abort). Data parallelism is
# tested in a subprocess with 2 fake devices and tiny shapes (test_data_parallel.py).
os.environ.setdefault("XLA_FLAGS", "")
# One persistent compilation cache for the whole session, in-process and in every child
# Python (they inherit the environment): the suite compiles the same runlocal steps in
# many tests and subprocesses; XLA:CPU takes ~20 s per train-step compile on 2 cores,
# a cache hit ~2 s. A fresh folder per session (removed at exit), so nothing stale.
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="facegan_jax_cache_")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
# The train and benchmark subprocesses the tests start are compile-bound, where the
# malloc policy of long runs (runtime.keep_freed_memory) costs 20-25%; test_runtime
# checks that policy in its own processes.
os.environ.setdefault("FACEGAN_MALLOC", "system")

import pytest

from facegan_jax import runtime

COMPILATION_CACHE = Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
atexit.register(shutil.rmtree, COMPILATION_CACHE, ignore_errors=True)

# What every entry point does first (XLA:CPU conv flag, PRNG option, TF off accelerators).
runtime.setup()

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("FACEGAN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


REQUIRE_SHARED_DATA = os.environ.get("FACEGAN_REQUIRE_SHARED_DATA", "") not in ("", "0")


def require_shared(folder: str) -> Path:
    """`SHARED_DATA/folder`; a missing one skips (one line) or, under CI, fails."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        message = (
            f"missing shared data {path}: put the shared {folder}/ folder there "
            "or set FACEGAN_SHARED_DATA to the folder holding it"
        )
        if REQUIRE_SHARED_DATA:
            pytest.fail(message + " (FACEGAN_REQUIRE_SHARED_DATA=1)", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder holding celeba/ (`../shared/data` or $FACEGAN_SHARED_DATA)."""
    require_shared("celeba")
    return SHARED_DATA


@pytest.fixture(scope="session")
def celeba_local_build(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The shared CelebA subset built once per session with our offline builder.

    Returns:
      (builder, BuildReport) from `celeba_local.prepare` (~40 s on 2 cores).
    """
    from facegan_jax.data import celeba_local

    data_dir = tmp_path_factory.mktemp("celeba_local_shared")
    return celeba_local.prepare(shared_data / "celeba", data_dir, show_progress=False)


@pytest.fixture(scope="session")
def inception_fixture_dir() -> Path:
    """The pytorch-fid-format Inception fixture folder (weights + pytorch-fid's features)."""
    return require_shared("inception_fixture")


@pytest.fixture(scope="session")
def inception_expected(inception_fixture_dir: Path) -> dict:
    """What pytorch-fid computed with the fixture weights (features, blocks, distances)."""
    import numpy as np

    with np.load(inception_fixture_dir / "fixture_expected_seed0.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="session")
def inception_weights(inception_fixture_dir: Path) -> str:
    """Path of the fixture weights in pytorch-fid's .pth format."""
    return str(inception_fixture_dir / "fixture_inception_seed0.pth")


@pytest.fixture(scope="session")
def inception_params(inception_weights: str):
    """The fixture weights loaded once per session, on the device."""
    import jax

    from facegan_jax.metrics import inception_weights as weights

    return jax.device_put(weights.load_inception_params(inception_weights))


@pytest.fixture(scope="session")
def synth_tfds_dir(tmp_path_factory) -> str:
    """TFDS data_dir of the session's small synthetic_faces (4,000 train, 500 eval, 32x32)."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def synth_classifier(synth_tfds_dir) -> Any:
    """A narrow 32x32 classifier trained on 4,000 synthetic faces (~40 s on 2 cores)."""
    import time

    from data_prep import train_attribute_classifier

    start = time.perf_counter()
    classifier = train_attribute_classifier.train(
        "synthetic_faces",
        synth_tfds_dir,
        32,
        steps=400,
        batch_size=32,
        widths=(16, 32, 64),
        synthetic_num_train=4000,
        synthetic_num_eval=500,
        log=lambda line: None,
    )
    print(f"trained the synthetic classifier in {time.perf_counter() - start:.1f} s")
    return classifier


@pytest.fixture(scope="session")
def saved_folder(synth_classifier, tmp_path_factory) -> Path:
    return synth_classifier.save(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="session")
def shared_compilation_cache() -> Path:
    """The session's persistent JAX compilation cache folder (see COMPILATION_CACHE)."""
    return COMPILATION_CACHE
