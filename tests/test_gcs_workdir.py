"""A run on a `gs://` workdir: train, SIGKILL, resume, sample, report; bytes equal to a local run.

Against a GCS emulator on 127.0.0.1 that this module starts itself
(tests/gcs_emulator.py); nothing leaves the machine. Every command runs as a
user would run it, in a subprocess with the emulator's environment, using the
production storage stack: etils.epath's default backend (TensorFlow's gfile),
Orbax + tensorstore for checkpoints, clu / tf.summary for events.

The same tiny run (configs/default.py:runlocal, synthetic faces in a local
TFDS folder) goes once into `gs://bucket/run` and once into a local folder,
each SIGKILLed right after its first checkpoint is committed and restarted to
the last step; then `facegan_jax.sample` on both must write the same PNG bytes.

Not run here: `facegan_jax.evaluate` (needs an attribute classifier folder) and
`facegan_jax.fid` on a workdir (needs the Inception weights: the shared fixture
or the cached pytorch-fid download).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

for _module, _dist in (
    ("gcp_storage_emulator", "gcp-storage-emulator"),
    ("google.cloud.storage", "google-cloud-storage"),
):
    pytest.importorskip(_module, reason=f"needs {_dist} (the GCS emulator tests)")

from tests.gcs_emulator import GcsEmulator  # noqa: E402

# Subprocesses for a minute or two: outside the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
GS_RUN = "run"  # gs://<bucket>/run
TOTAL_STEPS = 6
KILL_AFTER = 2  # SIGKILL once this checkpoint is committed (the next one is 2 steps later)
SEEDS = 16
OVERRIDES = (
    f"--config.total_steps={TOTAL_STEPS}",
    f"--config.checkpoint_every_steps={KILL_AFTER}",
    "--config.log_every_steps=2",
    "--config.sample_every_steps=3",
    "--config.max_checkpoints_to_keep=2",  # the restarted run deletes the first checkpoint
)


@pytest.fixture(scope="module")
def gcs():
    """The emulator, with an empty bucket, for the whole module."""
    with GcsEmulator() as emulator:
        yield emulator


def _environment(cache_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        **extra,
        "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m args...` from the repository root; fails the test on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def _train_killed_and_resumed(
    workdir: str,
    env: dict[str, str],
    tfds: Path,
    log: Path,
    committed_steps: Callable[[], list[int]],
) -> str:
    """Trains into `workdir`, SIGKILLs after checkpoint KILL_AFTER, trains again to the end.

    Returns:
      The restarted run's stderr.
    """
    args = [
        "facegan_jax.main",
        "--config=configs/default.py:runlocal",
        f"--workdir={workdir}",
        f"--config.data.tfds_data_dir={tfds}",
        *OVERRIDES,
    ]
    with open(log, "wb") as stderr:  # a file: a full pipe would stall the run
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        deadline = time.monotonic() + 240
        while (
            KILL_AFTER not in committed_steps()
            and proc.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-4000:]
    assert committed_steps() == [KILL_AFTER]  # killed between its first and second checkpoint

    restarted = _run(args, env)
    assert f"Resumed from checkpoint step {KILL_AFTER}" in restarted.stderr
    assert committed_steps() == [4, TOTAL_STEPS]
    return restarted.stderr


@pytest.fixture(scope="module")
def runs(gcs, shared_compilation_cache, tmp_path_factory) -> dict[str, Path]:
    """Both runs trained, killed, resumed and sampled.

    Returns:
      {'gs' | 'local': folder of the sampled PNGs, 'local_workdir': the local run's workdir}.
    """
    tmp = tmp_path_factory.mktemp("gcs_workdir")
    tfds = tmp / "tfds"
    gs_env = _environment(shared_compilation_cache, gcs.subprocess_env())
    local_env = _environment(shared_compilation_cache, dict(os.environ))
    gs_workdir = f"gs://{gcs.bucket}/{GS_RUN}"
    local_workdir = tmp / "run"

    def gs_steps() -> list[int]:
        done = (
            name.split("/")[2]
            for name in gcs.list_objects(f"{GS_RUN}/checkpoints/")
            if name.endswith("/commit_success.txt") and name.count("/") == 3
        )
        return sorted(int(s) for s in done if s.isdigit())

    def local_steps() -> list[int]:
        folder = local_workdir / "checkpoints"
        names = os.listdir(folder) if folder.is_dir() else []
        return sorted(int(n) for n in names if n.isdigit())

    # The local run first: it builds the synthetic TFDS data both runs read.
    _train_killed_and_resumed(str(local_workdir), local_env, tfds, tmp / "local.log", local_steps)
    _train_killed_and_resumed(gs_workdir, gs_env, tfds, tmp / "gs.log", gs_steps)

    out = {"gs": tmp / "faces_gs", "local": tmp / "faces_local", "local_workdir": local_workdir}
    for name, workdir, env in (
        ("gs", gs_workdir, gs_env),
        ("local", str(local_workdir), local_env),
    ):
        done = _run(
            [
                "facegan_jax.sample",
                "--workdir",
                workdir,
                "--seeds",
                f"0-{SEEDS - 1}",
                "--out-dir",
                str(out[name]),
            ],
            env,
        )
        assert f"wrote {SEEDS} PNGs" in done.stdout
    return out


def test_sampling_a_resumed_gs_run_writes_the_bytes_of_the_same_local_run(runs):
    names = [f"seed_{i:05d}.png" for i in range(SEEDS)]
    assert sorted(os.listdir(runs["gs"])) == sorted(os.listdir(runs["local"])) == names
    for name in names:
        assert (runs["gs"] / name).read_bytes() == (runs["local"] / name).read_bytes(), name


def test_the_gs_workdir_holds_every_output_of_the_run(runs, gcs):
    objects = set(gcs.list_objects(f"{GS_RUN}/"))
    rel = {name.removeprefix(f"{GS_RUN}/") for name in objects}
    local = runs["local_workdir"]

    # The same config and the same control grids as the local run, byte for byte.
    for name in ("config.json", "samples/step_0000003.png", "samples/step_0000006.png"):
        assert name in rel, sorted(rel)
        assert gcs.read_object(f"{GS_RUN}/{name}") == (local / name).read_bytes(), name
    assert "samples/latest.png" in rel
    assert any(name.startswith("events.out.tfevents.") for name in rel), sorted(rel)
    for name in ("index.html", "curves.png", "progress.gif"):
        assert f"report/{name}" in rel, sorted(rel)

    # The checkpoints the restarted run saved carry checksums that match the stored objects.
    for step in (4, TOTAL_STEPS):
        prefix = f"{GS_RUN}/checkpoints/{step}/"
        checksums = json.loads(gcs.read_object(prefix + "facegan_checksums.json"))["files"]
        assert "_CHECKPOINT_METADATA" in checksums, sorted(checksums)
        for file, (size, digest) in checksums.items():
            data = gcs.read_object(prefix + file)
            assert [len(data), hashlib.sha256(data).hexdigest()] == [size, digest], file
    assert not any(".orbax-checkpoint-tmp" in name for name in rel)
    # The first checkpoint was deleted (max_to_keep), every object of it.
    assert not any(name.startswith(f"checkpoints/{KILL_AFTER}") for name in rel), sorted(rel)


def test_the_report_command_rewrites_the_report_of_a_gs_workdir(
    runs, gcs, shared_compilation_cache
):
    del runs  # the run must exist
    report = [f"{GS_RUN}/report/{n}" for n in ("index.html", "curves.png", "progress.gif")]
    for name in report:
        gcs.delete(name)
    env = _environment(shared_compilation_cache, gcs.subprocess_env())
    done = _run(["facegan_jax.report", "--workdir", f"gs://{gcs.bucket}/{GS_RUN}"], env)
    assert f"index: gs://{gcs.bucket}/{GS_RUN}/report/index.html" in done.stdout
    assert all(gcs.exists(name) for name in report)
    assert b"<html" in gcs.read_object(report[0]).lower()


def test_a_bucket_without_its_client_is_one_line_naming_the_install(monkeypatch):
    import importlib.util

    from facegan_jax import errors
    from facegan_jax.training import train
    from tests.helpers import tiny_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "google.cloud.storage" else real(name, *a),
    )
    with pytest.raises(errors.WorkdirError, match=r"gs://b/run .*pip install 'facegan_jax\[gcs\]'"):
        train.check_workdir(tiny_config(), "gs://b/run")
