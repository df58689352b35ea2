"""The same seed gives the same PNG on 1, 2 and 8 devices (`sample` in subprocesses with
`--xla_force_host_platform_device_count`), for an unconditional DCGAN and a conditional ACGAN."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import acgan64
from facegan_jax.data.celeba_attributes import NUM_ATTRIBUTES
from tests.helpers import make_workdir, tiny_config

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sample(workdir: str, out_dir: str, devices: int, seeds: str) -> dict[str, bytes]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    code = (
        "import jax, sys; from facegan_jax.cli import sample; "
        f"assert jax.device_count() == {devices}, jax.devices(); "
        "sys.exit(sample.main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", code, "--workdir", workdir, "--seeds", seeds]
    cmd += ["--out-dir", out_dir, "--batch-size", "8"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {n: open(os.path.join(out_dir, n), "rb").read() for n in sorted(os.listdir(out_dir))}


def _differing(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    assert a.keys() == b.keys()
    return [name for name in a if a[name] != b[name]]


@pytest.mark.parametrize("model", ["dcgan", "acgan"])
def test_same_pngs_on_1_2_and_8_devices(model, tmp_path):
    """Bit-identical PNGs for 256 (DCGAN) / 64 (conditional ACGAN) seeds on 1, 2 and 8 devices.

    Before dcgan.Project4x4 and layers.conv_as_dot, 25 of 256 DCGAN PNGs (a trained
    run) and 2 of 64 ACGAN PNGs (this one) differed by one level between device counts.
    """
    if model == "dcgan":
        workdir = make_workdir(tmp_path / "run", tiny_config())
        seeds, count = "0-255", 256
    else:
        pool = (np.random.default_rng(0).random((20, NUM_ATTRIBUTES)) < 0.4).astype(np.float32)
        workdir = make_workdir(tmp_path / "run", acgan64.get_config("runlocal"), pool)
        seeds, count = "0-63", 64
    runs = {n: _sample(workdir, str(tmp_path / f"d{n}"), n, seeds) for n in (1, 2, 8)}
    assert len(runs[1]) == count
    for n in (2, 8):
        assert runs[n].keys() == runs[1].keys()
        differing = [name for name in runs[1] if runs[n][name] != runs[1][name]]
        assert not differing, f"{len(differing)} of {count} PNGs differ on {n} devices"
