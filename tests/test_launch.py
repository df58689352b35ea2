"""launch.sh: the exact commands of every mode (`--dry-run`), and the SLURM / TPU quoting.

`--dry-run` prints the commands a mode would run, one per line, and runs nothing. With a
missing virtualenv that includes the set-up (venv, pip with the mode's extras: cpu `test`,
gpu `test,gpu,gcs` = jax[cuda12], tpu `test,tpu,gcs` = jax[tpu]; gcs = google-cloud-storage);
with an up-to-date one, only the launch. Fake `srun` / `gcloud` / venv python executables
check that each SLURM task and each TPU worker receive exactly the intended arguments.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PY = sys.executable  # PYTHON for launch.sh (the version check and venv creation)
MAIN = "-m facegan_jax.main"


def _launch(*args: str, env: dict[str, str] | None = None, check: bool = True):
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "FACEGAN_", "VENV", "PYTHON"))
    }
    full_env["PYTHON"] = PY
    full_env.update(env or {})
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "launch.sh"), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _dry_run(*args: str, **env: str) -> list[str]:
    return _launch(*args, "--dry-run", env=env).stdout.splitlines()


def _setup_lines(venv: Path, extras: str) -> list[str]:
    return [
        f"{PY} -m venv {venv}",
        f"{venv}/bin/python -m pip install -q --upgrade pip",
        f"{venv}/bin/python -m pip install -q -e '.[{extras}]'",
    ]


@pytest.fixture
def new_venv(tmp_path: Path) -> Path:
    """A venv path that does not exist yet (dry runs then include the full set-up)."""
    return tmp_path / "venv"


@pytest.fixture
def ready_venv(tmp_path: Path) -> Path:
    """A fake venv whose set-up stamps are current; its python prints its argv to argv.log."""
    venv = tmp_path / "ready"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" ---- >> {tmp_path}/argv.log\n')
    python.chmod(0o755)
    meta = (REPO_ROOT / "setup.cfg").read_bytes() + (REPO_ROOT / "pyproject.toml").read_bytes()
    for accel in ("cpu", "gpu", "tpu"):
        (venv / f".facegan_setup_{accel}").write_text(hashlib.sha256(meta).hexdigest() + "\n")
    return venv


def _fake_tools(tmp_path: Path) -> str:
    """A PATH whose srun runs its command once per task (SLURM_PROCID/NTASKS set) and whose
    gcloud writes its argv to gcloud.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$@" > {tmp_path}/srun.log\n'
        "n=1\n"
        "while [[ $1 == --* ]]; do [[ $1 == --ntasks=* ]] && n=${1#--ntasks=}; shift; done\n"
        'for ((i = 0; i < n; i++)); do SLURM_PROCID=$i SLURM_NTASKS=$n "$@" || exit; done\n'
    )
    (bin_dir / "gcloud").write_text(
        f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path}/gcloud.log\n'
    )
    for tool in ("srun", "gcloud"):
        (bin_dir / tool).chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_dry_run_train_local_cpu(new_venv):
    lines = _dry_run(
        "train", "configs/dcgan64.py", "runs/x", "--config.total_steps=5", VENV=str(new_venv)
    )
    assert lines == [
        *_setup_lines(new_venv, "test"),
        f"{new_venv}/bin/python {MAIN} --config=configs/dcgan64.py --workdir=runs/x "
        "--config.total_steps=5",
    ]
    assert not new_venv.exists(), "--dry-run ran something"


def test_dry_run_gpu_host_installs_cuda_jax(new_venv):
    lines = _dry_run("gpu", "configs/dcgan64.py", "runs/x", VENV=str(new_venv))
    assert lines == [
        *_setup_lines(new_venv, "test,gpu,gcs"),
        f"{new_venv}/bin/python {MAIN} --config=configs/dcgan64.py --workdir=runs/x",
    ]


def test_dry_run_setup_per_accelerator(new_venv):
    for accel, extras in (("cpu", "test"), ("gpu", "test,gpu,gcs"), ("tpu", "test,tpu,gcs")):
        lines = _dry_run("setup", VENV=str(new_venv), FACEGAN_ACCEL=accel)
        assert lines == _setup_lines(new_venv, extras), accel


def test_dry_run_with_current_venv_only_launches(ready_venv):
    lines = _dry_run("--dry-run", "train", "configs/default.py", "runs/y", VENV=str(ready_venv))
    assert lines == [f"{ready_venv}/bin/python {MAIN} --config=configs/default.py --workdir=runs/y"]


def test_dry_run_demo_and_test_modes(ready_venv):
    assert _dry_run("demo", VENV=str(ready_venv)) == [
        f"{ready_venv}/bin/python {MAIN} --config=configs/default.py --workdir=runs/default"
    ]
    lines = _dry_run("test", "-x", VENV=str(ready_venv), FACEGAN_SHARED_DATA="/data/shared")
    assert lines == [
        f"{ready_venv}/bin/ruff check .",
        f"{ready_venv}/bin/ruff format --check .",
        f"env FACEGAN_SHARED_DATA=/data/shared {ready_venv}/bin/python -m pytest -q -x",
    ]


SLURM_ENV = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NUM_NODES": "4",
    "SLURM_JOB_NODELIST": "gpu[017-019,023],login2",
}


def test_dry_run_slurm_one_process_per_node(new_venv):
    lines = _dry_run(
        "slurm",
        "configs/dcgan64.py",
        "/shared/runs/x",
        "--config.train.batch_size=256",
        VENV=str(new_venv),
        **SLURM_ENV,
    )
    # Port: JAX's rule, 4242 % 4096 + 61440.
    assert lines == [
        *_setup_lines(new_venv, "test,gpu,gcs"),
        "srun --nodes=4 --ntasks=4 --ntasks-per-node=1 bash -c "
        f"'exec {new_venv}/bin/python {MAIN} --config=configs/dcgan64.py "
        "--workdir=/shared/runs/x --coordinator-address=gpu017:61586 "
        "--num-processes=$SLURM_NTASKS --process-id=$SLURM_PROCID "
        "--config.train.batch_size=256'",
    ]
    # FACEGAN_ACCEL and FACEGAN_COORDINATOR_PORT override the defaults.
    lines = _dry_run(
        "slurm",
        "c.py",
        "w",
        VENV=str(new_venv),
        FACEGAN_ACCEL="cpu",
        FACEGAN_COORDINATOR_PORT="12345",
        **{**SLURM_ENV, "SLURM_JOB_NODELIST": "node7", "SLURM_JOB_NUM_NODES": "1"},
    )
    assert lines == [
        *_setup_lines(new_venv, "test"),
        "srun --nodes=1 --ntasks=1 --ntasks-per-node=1 bash -c "
        f"'exec {new_venv}/bin/python {MAIN} --config=c.py --workdir=w "
        "--coordinator-address=node7:12345 --num-processes=$SLURM_NTASKS "
        "--process-id=$SLURM_PROCID'",
    ]


def test_slurm_outside_an_allocation_is_an_error(new_venv):
    proc = _launch("slurm", "c.py", "w", "--dry-run", env={"VENV": str(new_venv)}, check=False)
    assert proc.returncode == 2
    assert "inside an sbatch/salloc allocation" in proc.stderr
    assert proc.stdout == ""


def test_slurm_each_task_gets_its_process_id(ready_venv, tmp_path):
    env = {"VENV": str(ready_venv), "PATH": _fake_tools(tmp_path), **SLURM_ENV}
    env["SLURM_JOB_NUM_NODES"] = "2"
    odd = "--config.data.tfds_data_dir=/data/it's here"
    _launch("slurm", "configs/acgan64.py", "/shared/w", odd, env=env)
    tasks = (tmp_path / "argv.log").read_text().split("----\n")[:-1]
    assert len(tasks) == 2
    for i, task in enumerate(tasks):
        assert task.splitlines() == [
            "-m",
            "facegan_jax.main",
            "--config=configs/acgan64.py",
            "--workdir=/shared/w",
            "--coordinator-address=gpu017:61586",
            "--num-processes=2",
            f"--process-id={i}",
            odd,
        ]


def test_dry_run_tpu_pod():
    lines = _dry_run(
        "tpu",
        "my-pod",
        "us-central2-b",
        "configs/dcgan64.py",
        "gs://bucket/runs/x",
        "--config.total_steps=10",
        VENV=".venv",
    )
    assert lines == [
        "gcloud compute tpus tpu-vm ssh my-pod --zone us-central2-b --worker=all --command "
        f"'cd {REPO_ROOT} && FACEGAN_ACCEL=tpu bash launch.sh setup && .venv/bin/python "
        f"{MAIN} --config=configs/dcgan64.py --workdir=gs://bucket/runs/x --distributed "
        "--config.total_steps=10'"
    ]


def test_tpu_passes_one_remote_command_to_gcloud(tmp_path):
    env = {"PATH": _fake_tools(tmp_path)}
    _launch("tpu", "pod", "europe-west4-a", "c.py", "gs://b/w", "--config.seed=3", env=env)
    assert (tmp_path / "gcloud.log").read_text().splitlines() == [
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "pod",
        "--zone",
        "europe-west4-a",
        "--worker=all",
        "--command",
        f"cd {REPO_ROOT} && FACEGAN_ACCEL=tpu bash launch.sh setup && .venv/bin/python "
        f"{MAIN} --config=c.py --workdir=gs://b/w --distributed --config.seed=3",
    ]


@pytest.mark.parametrize(
    "args",
    [("train", "only_config.py"), ("gpu",), ("tpu", "pod", "zone", "c.py"), ("nonsense",)],
)
def test_bad_usage_exits_2(args):
    proc = _launch(*args, "--dry-run", check=False)
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
