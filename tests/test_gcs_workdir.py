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

On copies of that run and a fresh one, also on `gs://`: a corrupt newest
checkpoint is set aside as `<step>.corrupt` and training resumes from the one
before; SIGTERM checkpoints and exits 0; `facegan_jax.evaluate` reads a
classifier folder on `gs://` and writes its JSON there; `facegan_jax.fid`
samples the workdir and writes / reads statistics on `gs://` (with the shared
Inception fixture: skipped on a fresh clone without it, see tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
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
GS_CORRUPT = "corrupt"  # a copy of the finished run whose newest checkpoint is damaged
GS_STOPPED = "stopped"  # a fresh run stopped by SIGTERM
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


def _gs_env(gcs: GcsEmulator, cache_dir: Path) -> dict[str, str]:
    return _environment(cache_dir, gcs.subprocess_env())


def _train_args(workdir: str, tfds: Path, *extra: str) -> list[str]:
    """`facegan_jax.main` on the tiny run; `extra` overrides OVERRIDES (later flags win)."""
    return [
        "facegan_jax.main",
        "--config=configs/default.py:runlocal",
        f"--workdir={workdir}",
        f"--config.data.tfds_data_dir={tfds}",
        *OVERRIDES,
        *extra,
    ]


def _committed_gs_steps(gcs: GcsEmulator, run: str) -> list[int]:
    """Steps of `gs://bucket/<run>/checkpoints/<step>` whose save was committed."""
    done = (
        name.split("/")[2]
        for name in gcs.list_objects(f"{run}/checkpoints/")
        if name.endswith("/commit_success.txt") and name.count("/") == 3
    )
    return sorted(int(s) for s in done if s.isdigit())


def _assert_checksums_match(gcs: GcsEmulator, prefix: str) -> dict[str, list]:
    """The checkpoint at `prefix` (`<run>/checkpoints/<step>/`): its checksum file, verified."""
    checksums = json.loads(gcs.read_object(prefix + "facegan_checksums.json"))["files"]
    assert "_CHECKPOINT_METADATA" in checksums, sorted(checksums)
    for file, (size, digest) in checksums.items():
        data = gcs.read_object(prefix + file)
        assert [len(data), hashlib.sha256(data).hexdigest()] == [size, digest], prefix + file
    return checksums


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
    args = _train_args(workdir, tfds)
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
      {'gs' | 'local': folder of the sampled PNGs, 'local_workdir': the local run's workdir,
      'tfds': the TFDS data_dir of both runs}.
    """
    tmp = tmp_path_factory.mktemp("gcs_workdir")
    tfds = tmp / "tfds"
    gs_env = _gs_env(gcs, shared_compilation_cache)
    local_env = _environment(shared_compilation_cache, dict(os.environ))
    gs_workdir = f"gs://{gcs.bucket}/{GS_RUN}"
    local_workdir = tmp / "run"

    def gs_steps() -> list[int]:
        return _committed_gs_steps(gcs, GS_RUN)

    def local_steps() -> list[int]:
        folder = local_workdir / "checkpoints"
        names = os.listdir(folder) if folder.is_dir() else []
        return sorted(int(n) for n in names if n.isdigit())

    # The local run first: it builds the synthetic TFDS data both runs read.
    _train_killed_and_resumed(str(local_workdir), local_env, tfds, tmp / "local.log", local_steps)
    _train_killed_and_resumed(gs_workdir, gs_env, tfds, tmp / "gs.log", gs_steps)

    out = {
        "gs": tmp / "faces_gs",
        "local": tmp / "faces_local",
        "local_workdir": local_workdir,
        "tfds": tfds,
    }
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
        _assert_checksums_match(gcs, f"{GS_RUN}/checkpoints/{step}/")
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


def test_a_corrupt_newest_gs_checkpoint_is_set_aside_and_training_resumes_from_the_previous(
    runs, gcs, shared_compilation_cache
):
    # A copy of the finished run (checkpoints 4 and 6), so the run itself stays as it is.
    gcs.copy_prefix(f"{GS_RUN}/", f"{GS_CORRUPT}/")
    workdir = f"gs://{gcs.bucket}/{GS_CORRUPT}"
    checkpoints = f"{workdir}/checkpoints"
    newest = f"{GS_CORRUPT}/checkpoints/{TOTAL_STEPS}/"
    saved = _assert_checksums_match(gcs, newest)
    # Same size, different bytes in its largest array file: Orbax alone would restore these.
    victim = max((f for f in saved if "/d/" in f"/{f}"), key=lambda f: saved[f][0])
    data = bytearray(gcs.read_object(newest + victim))
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    assert bytes(data) != gcs.read_object(newest + victim)
    gcs.write_object(newest + victim, bytes(data))
    before = gcs.list_objects(newest)

    total = TOTAL_STEPS + 2
    done = _run(
        _train_args(workdir, runs["tfds"], f"--config.total_steps={total}"),
        _gs_env(gcs, shared_compilation_cache),
    )
    assert (
        f"checkpoint {checkpoints}/{TOTAL_STEPS} is corrupt ({victim} does not match its "
        f"checksum); restored the previous checkpoint, {checkpoints}/4, instead (the corrupt "
        f"one is kept as {checkpoints}/{TOTAL_STEPS}.corrupt)" in done.stderr
    ), done.stderr[-4000:]
    assert "Resumed from checkpoint step 4 in" in done.stderr
    assert f"Done at step {total}." in done.stderr
    # Step 6 was trained and saved again, then 8; 4 went (max_to_keep=2), the corrupt one stays.
    assert _committed_gs_steps(gcs, GS_CORRUPT) == [TOTAL_STEPS, total]
    _assert_checksums_match(gcs, f"{GS_CORRUPT}/checkpoints/{total}/")
    _assert_checksums_match(gcs, newest)  # the new step 6
    # Every file of the corrupt checkpoint is kept, byte for byte (folder markers aside).
    kept = f"{GS_CORRUPT}/checkpoints/{TOTAL_STEPS}.corrupt/"
    files = [name[len(newest) :] for name in before if not name.endswith("/")]
    assert [n[len(kept) :] for n in gcs.list_objects(kept) if not n.endswith("/")] == files
    assert gcs.read_object(kept + victim) == bytes(data)
    for rel in set(saved) - {victim}:
        assert hashlib.sha256(gcs.read_object(kept + rel)).hexdigest() == saved[rel][1], rel


def _wait_for_line(pattern: str, log: Path, proc: subprocess.Popen, timeout: float) -> re.Match:
    """The first match of `pattern` in the log file a running `proc` writes; fails on exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {pattern!r}:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    pytest.fail(f"no {pattern!r} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def test_sigterm_checkpoints_a_fresh_gs_run_and_exits_0(
    runs, gcs, shared_compilation_cache, tmp_path
):
    workdir = f"gs://{gcs.bucket}/{GS_STOPPED}"
    args = _train_args(
        workdir,
        runs["tfds"],
        "--config.total_steps=1000000",  # hours: only SIGTERM ends it
        "--config.log_every_steps=5",
        "--config.checkpoint_every_steps=1000000",
        "--config.sample_every_steps=1000000",
    )
    log = tmp_path / "stopped.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO_ROOT,
            env=_gs_env(gcs, shared_compilation_cache),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            logged = int(_wait_for_line(r"\] step (\d+)/1000000:", log, proc, 240).group(1))
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=60)  # generous: not a timing test
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text(errors="replace")
    assert returncode == 0, text[-4000:]
    stopped = re.search(r"SIGTERM: checkpointing step (\d+) and stopping", text)
    assert stopped, text[-4000:]
    step = int(stopped.group(1))
    assert step >= logged
    assert f"Stopped at step {step} (SIGTERM) with checkpoint {workdir}/checkpoints/{step};" in text
    assert _committed_gs_steps(gcs, GS_STOPPED) == [step]
    _assert_checksums_match(gcs, f"{GS_STOPPED}/checkpoints/{step}/")
    assert not gcs.exists(f"{GS_STOPPED}/report/index.html")  # a stopped run skips the report


def test_evaluate_reads_a_gs_workdir_and_a_gs_classifier_and_writes_json_to_gs(
    runs, gcs, shared_compilation_cache, tmp_path
):
    from tests.helpers import untrained_classifier

    del runs  # the run must exist
    # An untrained classifier of the run's 32x32 images (fd_attr needs only its features).
    classifier = untrained_classifier(32, feature_dim=32, seed=3)
    local = Path(classifier.save(tmp_path / "classifier"))
    for name in sorted(os.listdir(local)):
        gcs.write_object(f"classifiers/tiny/{name}", (local / name).read_bytes())
    done = _run(
        [
            "facegan_jax.evaluate",
            "--workdir",
            f"gs://{gcs.bucket}/{GS_RUN}",
            "--classifier",
            f"gs://{gcs.bucket}/classifiers/tiny",
            "--num-samples",
            "16",
            "--batch-size",
            "8",
            "--json",
            f"gs://{gcs.bucket}/eval.json",
        ],
        _gs_env(gcs, shared_compilation_cache),
    )
    first = done.stdout.splitlines()[0]
    assert first.startswith("fd_attr ") and "(16 generated vs 16 real)" in first, done.stdout
    fd_attr = float(first.split()[1])
    assert math.isfinite(fd_attr) and fd_attr > 0
    metrics = json.loads(gcs.read_object("eval.json"))
    assert metrics["fd_attr"] == pytest.approx(fd_attr, abs=1e-3)
    # The real images' features are cached in the gs workdir.
    assert gcs.list_objects(f"{GS_RUN}/attr_reference/"), gcs.list_objects(f"{GS_RUN}/")


def test_fid_samples_a_gs_workdir_and_writes_and_reads_statistics_on_gs(
    runs, gcs, shared_compilation_cache, inception_weights
):
    del runs  # the run must exist
    env = _gs_env(gcs, shared_compilation_cache)
    workdir, stats = f"gs://{gcs.bucket}/{GS_RUN}", f"gs://{gcs.bucket}/fid/run_stats.npz"
    common = ["--weights", inception_weights, "--num-samples", "8", "--batch-size", "8"]
    saved = _run(["facegan_jax.fid", "--save-stats", workdir, stats, *common], env)
    assert f"Saved statistics of 8 images to {stats}" in saved.stdout
    assert gcs.exists("fid/run_stats.npz")

    done = _run(["facegan_jax.fid", workdir, stats, *common], env)
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("FID: "), done.stdout
    value = float(line.removeprefix("FID: "))
    # The same 8 samples of the same checkpoint: the distance of a distribution to itself.
    assert math.isfinite(value) and value == pytest.approx(0.0, abs=1e-2)


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
