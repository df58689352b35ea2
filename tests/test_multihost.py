"""Two processes ("hosts") on 127.0.0.1: `python -m facegan_jax.main` with an explicit coordinator.

Each process has 1 CPU device and reads its own input shard (`tfds.split_for_jax_process`);
cross-process collectives use gloo. The run checkpoints into one shared workdir (Orbax:
every process writes its part, only process 0 the metadata) and must equal a single
process on 2 devices fed the same global batches (the two shards side by side), restore
into a 1-process run, and sample from a 1-device process. SIGTERM sent to one process
must stop both at the same step with one checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from facegan_jax import distributed
from tests.conftest import REPO_ROOT
from tests.helpers import python_env, run_python

# Minutes of training or subprocesses: outside the fast subset (`-m "not slow"`).
pytestmark = pytest.mark.slow

NUM_PROCESSES = 2
# Tiny and short: 4 steps, checkpoints at 2 and 4, one sample grid at 4.
_OVERRIDES = (
    "--config.total_steps=4",
    "--config.checkpoint_every_steps=2",
    "--config.sample_every_steps=4",
    "--config.log_every_steps=2",
    "--config.model.g_dim=4",
    "--config.model.d_dim=4",
)


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("node001", "node001"),
        ("node001,host2", "node001"),
        ("node[003-006,9],gpu1", "node003"),
        ("gpu-[12,14]", "gpu-12"),
        ("rack[2-3]-n[07-08],login", "rack2-n07"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert distributed.first_slurm_host(nodelist) == first


def test_slurm_coordinator_address_uses_jax_port_rule_or_override():
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[017-020]"}
    assert distributed.slurm_coordinator_address(env) == "gpu017:61586"  # 4242 % 4096 + 61440
    env["FACEGAN_COORDINATOR_PORT"] = "1234"
    assert distributed.slurm_coordinator_address(env) == "gpu017:1234"
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST is not set"):
        distributed.slurm_coordinator_address({"SLURM_JOB_ID": "1"})


def test_process_flags_all_or_none():
    assert distributed.spec_from_flags(None, None, None) is None
    spec = distributed.spec_from_flags("10.0.0.1:1234", 4, 3)
    assert spec == distributed.ProcessSpec("10.0.0.1:1234", 4, 3)
    with pytest.raises(ValueError, match="--num-processes, --process-id missing"):
        distributed.spec_from_flags("h:1", None, None)
    with pytest.raises(ValueError, match=r"--process-id=2 must be in \[0, 2\)"):
        distributed.spec_from_flags("h:1", 2, 2)
    with pytest.raises(ValueError, match="--coordinator-address='h' must be HOST:PORT"):
        distributed.spec_from_flags("h", 2, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_processes(workdir: Path, data_dir: Path, *overrides: str) -> list:
    """Starts the 2 training processes; returns [(Popen, log path)] (logs: stdout + stderr)."""
    port = _free_port()
    procs = []
    for i in range(NUM_PROCESSES):
        log = workdir.parent / f"{workdir.name}.process{i}.log"
        cmd = [
            sys.executable,
            "-m",
            "facegan_jax.cli.train",
            "--config=configs/default.py:runlocal",
            f"--workdir={workdir}",
            f"--config.data.tfds_data_dir={data_dir}",
            *overrides,
            f"--coordinator-address=127.0.0.1:{port}",
            f"--num-processes={NUM_PROCESSES}",
            f"--process-id={i}",
        ]
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=python_env(), stdout=f, stderr=f)
        procs.append((proc, log))
    return procs


def _tail(log: Path, n: int = 2500) -> str:
    return f"--- {log.name} ---\n{log.read_text()[-n:]}"


def _wait_all(procs: list, timeout: float) -> list[int]:
    """Return codes of all processes; kills them all and fails if one is still running."""
    deadline = time.monotonic() + timeout
    for proc, _ in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            break
    if any(proc.poll() is None for proc, _ in procs):
        running = [i for i, (proc, _) in enumerate(procs) if proc.poll() is None]
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        pytest.fail(
            f"processes {running} still running after {timeout:.0f} s (killed)\n"
            + "\n".join(_tail(log) for _, log in procs)
        )
    return [proc.returncode for proc, _ in procs]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 2-process training run: (workdir, TFDS data dir it built and read)."""
    root = tmp_path_factory.mktemp("multihost")
    workdir, data_dir = root / "run", root / "tfds"
    # Rendered once up front: two processes preparing the same TFDS dataset at once race on
    # TFDS's final rename ("Cannot rename ... incomplete.XXXX ... already exists").
    prepare = (
        "import sys; from facegan_jax import runtime; from facegan_jax.data import input_pipeline; "
        "runtime.setup(); "
        "from tests.helpers import load_config_file; "
        "c = load_config_file('configs/default.py:runlocal', *sys.argv[1:]); "
        "input_pipeline.get_builder(c.data, seed=c.seed)"
    )
    subprocess.run(
        [sys.executable, "-c", prepare, f"--config.data.tfds_data_dir={data_dir}", *_OVERRIDES],
        cwd=REPO_ROOT,
        env=python_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    procs = _start_processes(workdir, data_dir, *_OVERRIDES)
    codes = _wait_all(procs, timeout=540)
    assert codes == [0, 0], "\n".join(_tail(log) for _, log in procs)
    for i, (_, log) in enumerate(procs):
        # Each process sees the global device list: one CPU device per process.
        devices = re.search(rf"JAX process {i}/{NUM_PROCESSES}, devices: (.*)", log.read_text())
        assert devices and devices.group(1).count("CpuDevice(") == NUM_PROCESSES, _tail(log)
    return workdir, data_dir


def test_two_processes_write_one_workdir(two_process_run):
    workdir, _ = two_process_run
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    for step in ("2", "4"):
        ckpt = workdir / "checkpoints" / step
        assert (ckpt / "_CHECKPOINT_METADATA").is_file()
        # Each process wrote its own part of the OCDBT store.
        parts = sorted(p.name for p in (ckpt / "default").glob("ocdbt.process_*"))
        assert parts == ["ocdbt.process_0", "ocdbt.process_1"], parts
    assert (workdir / "config.json").is_file()
    assert sorted(os.listdir(workdir / "samples")) == ["latest.png", "step_0000004.png"]
    # TensorBoard events from process 0 only (the others log to their log file).
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1


_REFERENCE = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from facegan_jax.training import checkpointing, components
    from facegan_jax.data import input_pipeline
    from facegan_jax import runtime
    from tests.helpers import load_config_file

    runtime.setup()
    workdir, *overrides = sys.argv[1:]
    config = load_config_file("configs/default.py:runlocal", *overrides)
    assert jax.process_count() == 1 and len(jax.devices()) == 2, jax.devices()
    run = components.build(config)
    # The global batch of the 2-process run: process i's shard on device i.
    shards = [
        input_pipeline.create_dataset(
            config, config.data.train_split, batch_size=config.train.batch_size // 2,
            shuffle=True, repeat=True, process_index=i, process_count=2,
        ).as_numpy_iterator()
        for i in range(2)
    ]
    state = run.create_state()
    for _ in range(config.total_steps):
        parts = [next(shard) for shard in shards]
        host = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        batch = jax.device_put(host, run.batch_sharding)
        assert len(batch["image"].sharding.device_set) == 2
        state, _ = run.train_step(state, batch)
    manager = checkpointing.create_manager(workdir)
    restored = checkpointing.restore(manager, run.abstract_state())
    assert int(restored.step) == config.total_steps, int(restored.step)
    want = jax.tree_util.tree_leaves_with_path(jax.device_get(state))
    got = jax.tree.leaves(jax.device_get(restored))
    for (path, a), b in zip(want, got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    print("MULTIHOST_MATCH_OK", len(got))
    """
)


def test_two_process_run_equals_one_process_on_two_devices(two_process_run):
    workdir, data_dir = two_process_run
    args = [str(workdir), f"--config.data.tfds_data_dir={data_dir}", *_OVERRIDES]
    out = run_python(["-c", _REFERENCE, *args], num_devices=2, timeout=540)
    assert "MULTIHOST_MATCH_OK" in out


def test_two_process_checkpoint_samples_on_one_device(two_process_run, tmp_path):
    workdir, _ = two_process_run
    out = tmp_path / "x.png"
    cmd = ["-m", "facegan_jax.cli.sample", "--workdir", str(workdir)]
    stdout = run_python([*cmd, "--seeds", "0-3", "--out", str(out)], timeout=300)
    assert out.stat().st_size > 0
    assert "wrote 4 samples" in stdout


def test_sigterm_to_one_process_stops_both_at_one_step_with_one_checkpoint(
    two_process_run, tmp_path
):
    _, data_dir = two_process_run
    workdir = tmp_path / "run"
    procs = _start_processes(
        workdir,
        data_dir,
        "--config.total_steps=100000",
        "--config.checkpoint_every_steps=100000",
        "--config.sample_every_steps=100000",
        "--config.log_every_steps=1",
        "--config.model.g_dim=4",
        "--config.model.d_dim=4",
    )
    (p0, _), (p1, log1) = procs
    # Wait until process 1 is in the training loop (it has logged a step's metrics).
    deadline = time.monotonic() + 420
    while not (logged := re.findall(r"\[(\d+)\] train/", log1.read_text())):
        if time.monotonic() > deadline or p0.poll() is not None or p1.poll() is not None:
            for p, _ in procs:
                if p.poll() is None:
                    p.kill()
            pytest.fail("training did not start\n" + "\n".join(_tail(log) for _, log in procs))
        time.sleep(0.5)
    p1.send_signal(signal.SIGTERM)
    codes = _wait_all(procs, timeout=150)
    logs = "\n".join(_tail(log) for _, log in procs)
    assert codes == [0, 0], logs
    steps = os.listdir(workdir / "checkpoints")
    assert len(steps) == 1, (steps, logs)
    assert int(logged[-1]) <= int(steps[0]) < 100000, (steps, logged[-1])
