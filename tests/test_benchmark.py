"""The benchmark command: its peak estimate and its output format (tiny config, CPU)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from facegan_jax.cli.benchmark import cpu_peak_gflops
from facegan_jax.models import fast_conv
from tests.conftest import REPO_ROOT

# Minutes of training or subprocesses: outside the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

_ZEN3 = "processor\t: 0\ncpu MHz\t\t: 2445.404\nflags\t\t: fpu sse sse2 fma avx avx2 bmi2\n"
_SKYLAKE = "cpu MHz\t\t: 3000.000\nflags\t\t: sse2 fma avx avx2 avx512f avx512bw\n"


def test_cpu_peak_counts_fma_width_cores_and_clock():
    peak, how = cpu_peak_gflops(_ZEN3, cores=2)
    assert abs(peak - 2 * 32 * 2.445404) < 1e-6  # AVX2: 2 FMA pipes x 8 lanes x 2 FLOP
    assert "AVX2+FMA" in how and "2 cores" in how
    peak, how = cpu_peak_gflops(_SKYLAKE, cores=4, max_mhz=3500.0)
    assert abs(peak - 4 * 64 * 3.5) < 1e-6  # AVX-512 at cpufreq's maximum clock
    assert "AVX-512" in how
    peak, _ = cpu_peak_gflops("cpu MHz : 1000\nflags : sse sse2\n", cores=1)
    assert abs(peak - 16.0) < 1e-6


def test_benchmark_prints_figures_layer_profile_and_result_lines():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "facegan_jax.cli.benchmark",
            "--config=configs/dcgan32.py:runlocal",
            "--only=train,layers",
            "--steps=2",
            "--warmup=1",
            "--config.train.batch_size=8",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert re.search(r"^peak: \d+ GFLOP/s \(nominal \d+ cores x", out, re.M), out
    flops = re.search(r"train: ([0-9.]+) GFLOP per training image.*% of \d+ GFLOP/s peak", out)
    assert flops and float(flops.group(1)) > 0, out
    # The layer profile: every conv of G (4 here) and D (3 + the final 4x4), three parts each.
    rows = re.findall(r"^layers: (\w+) .* fwd .* ms .* \| dgrad .* \| wgrad .* ms", out, re.M)
    assert rows.count("FastConvTranspose2x") == 3 and rows.count("FastConvStride2") == 3, out
    assert rows.count("Project4x4") == 1 and rows.count("Conv") == 1, out
    # Each fast layer names the formulation of its parts on this CPU kind.
    paths = re.findall(
        r"^layers: FastConvTranspose2x .* \| fwd (\w+), dgrad lax, wgrad strided-conv", out, re.M
    )
    assert len(paths) == 3 and set(paths) <= {"lax", "phases", "s2d"}, out
    strided = re.findall(
        r"^layers: FastConvStride2\s+\S+\s+in \d+x(\d+)x.* \| fwd lax, dgrad (\w+), wgrad lax "
        r"\[(\w+)\]$",
        out,
        re.M,
    )
    assert len(strided) == 3, out
    assert all(dgrad == fast_conv.strided_dgrad(int(h), isa) for h, dgrad, isa in strided), out
    result = re.search(r"^RESULT name=train img_per_s=([0-9.]+) batch=8$", out, re.M)
    assert result and float(result.group(1)) > 0, out
