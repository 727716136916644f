"""launch/: each script's --dry-run prints its whole command sequence (no gcloud, sbatch or
JAX needed), and a usage mistake is one line and exit 2."""

import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JAX_VERSION = re.search(r"^jax==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)[1]


def _dry_run(script: str, *args, env=None, code=0) -> list[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/home/u", **(env or {})}
    command = ["bash", f"launch/{script}", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == code, result.stderr
    if code:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr.strip().splitlines()
    return result.stdout.strip().splitlines()


def test_local_multiprocess_starts_every_process_on_one_port():
    lines = _dry_run("local_multiprocess.sh", "--dry-run", "3", "--config", "configs/tiny.py",
                     "--workdir", "runs/a b", env={"DEVICES_PER_PROCESS": "2", "PYTHON": "python3",
                                                  "XLA_FLAGS": "--keep=1"})  # fmt: skip
    starts, last = lines[:-1], lines[-1]
    assert len(starts) == 3 and last.startswith("wait")
    ports = set()
    for i, line in enumerate(starts):
        words = shlex.split(line.removesuffix(" &"))
        assert words[:2] == ["env", "XLA_FLAGS=--keep=1 --xla_force_host_platform_device_count=2"]
        assert words[3:7] == ["python3", "-m", "sdn_jax.main", "--config"]
        assert "runs/a b" in words and f"--process_id={i}" in words and "--num_processes=3" in words
        ports |= {w for w in words if w.startswith("--coordinator_address=127.0.0.1:")}
    assert len(ports) == 1
    assert _dry_run("local_multiprocess.sh", "--dry-run", "two", code=2)[0].startswith("usage")


def test_tpu_vm_prints_create_setup_data_train_and_logs():
    lines = _dry_run("tpu_vm.sh", "--dry-run", "--bucket", "my-bucket", "--type", "v4-32",
                     "--zone", "us-central2-b", "--", "--config.model.dtype=bfloat16")  # fmt: skip
    steps = [line.removeprefix("# --- ") for line in lines if line.startswith("# --- ")]
    assert steps == ["create", "setup", "data", "train", "logs"]
    text = "\n".join(lines)
    assert "tpu-vm create sdn-celeba128 --zone us-central2-b --accelerator-type v4-32" in text
    assert (
        f"jax[tpu]=={JAX_VERSION}" in text and "gcsfuse --implicit-dirs my-bucket /mnt/sdn" in text
    )
    assert "--worker=all" in text and "gs://my-bucket/celeba" in text
    train = next(line for line in lines if "nohup" in line)
    assert "--worker=all" in train
    assert ("python -m sdn_jax.main --config configs/celeba128.py --workdir "
            "/mnt/sdn/runs/celeba128 --config.data.data_dir=/mnt/sdn/tensorflow_datasets "
            "--config.model.dtype=bfloat16") in train  # fmt: skip
    assert "--worker=0" in lines[-1] and "tail -F" in lines[-1]
    delete = _dry_run("tpu_vm.sh", "--dry-run", "--bucket", "b", "delete")
    assert delete[-1] == "gcloud compute tpus tpu-vm delete sdn-celeba128 --zone us-west4-a --quiet"
    assert "--bucket" in _dry_run("tpu_vm.sh", "--dry-run", code=2)[0]


def test_slurm_prints_the_setup_the_submission_and_each_task():
    lines = _dry_run("slurm_gpu.sbatch", "--dry-run", "--config.train.num_steps=10",
                     env={"TFDS_DATA_DIR": "/shared/tfds", "SDN_VENV": "/v",
                          "SDN_WORKDIR": "/shared/run"})  # fmt: skip
    text = "\n".join(lines)
    assert f"/v/bin/pip install -r requirements.txt jax\\[cuda12\\]=={JAX_VERSION}" in text
    assert "sdn_jax.data.prepare --dataset celeba" in text
    submit = next(line for line in lines if line.startswith("# the job: sbatch"))
    assert "--ntasks-per-node=8 --gpus-per-node=8" in submit and "--signal=TERM@300" in submit
    assert lines[-1].split() == ["srun", "--kill-on-bad-exit=1", "--cpu-bind=none",
                                 "/v/bin/python", "-m", "sdn_jax.main", "--config",
                                 "configs/celeba128.py", "--workdir", "/shared/run",
                                 "--config.data.data_dir=/shared/tfds",
                                 "--config.train.num_steps=10"]  # fmt: skip
    assert "TFDS_DATA_DIR" in _dry_run("slurm_gpu.sbatch", "--dry-run", code=2)[0]


FAKE_PROCESS = """#!/usr/bin/env bash
# Stands in for `python -m sdn_jax.main`: says it started, and on SIGTERM "saves" and
# exits 130 as the trainer does.
log="$(dirname "$0")/log"
trap 'echo "stopped ${*: -1}" >> "$log"; exit 130' TERM
echo "started ${*: -1}" >> "$log"
while true; do sleep 0.05; done
"""


def test_local_multiprocess_forwards_sigterm_and_waits_for_every_process(tmp_path):
    """SIGTERM to the launcher reaches every process; it returns once they have all
    stopped, with their status (130: stopped at a checkpoint)."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PROCESS)
    fake.chmod(0o755)
    log = tmp_path / "log"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "PORT": "1"}
    command = ["bash", "launch/local_multiprocess.sh", "2", "--workdir", "w"]
    launcher = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text().count("started") == 2):
            assert time.monotonic() < deadline and launcher.poll() is None, "not started"
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=30)
    finally:
        launcher.kill()
    assert launcher.returncode == 130, stderr
    assert sorted(log.read_text().split("\n")[2:4]) == [
        "stopped --process_id=0", "stopped --process_id=1"
    ]  # fmt: skip
