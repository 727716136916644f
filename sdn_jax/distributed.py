"""Starting JAX's distributed runtime the way the platform says, before anything else.

`python -m sdn_jax.main` is started the same way everywhere: one process per host (TPU VM
slices: `gcloud ... ssh --worker=all`), one per GPU (Slurm: `srun`), or N on one machine
(launch/local_multiprocess.sh). `plan` reads how from the flags and the environment:

  explicit  --coordinator_address/--num_processes/--process_id, or JAX's own variables
            JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (local runs);
  slurm     inside an `srun` step of more than one task (SLURM_* variables);
  tpu       on a Cloud TPU VM (libtpu installed and TPU chips present): JAX asks the
            VM's metadata server for the slice's workers (a one-host slice gets 1 process);
  none      anything else: one process, nothing to start (a laptop, one GPU).

Starting the runtime must come before JAX touches a device, so this module never does.
"""

import dataclasses
import glob
import importlib.util
import logging
import os

import jax

log = logging.getLogger("sdn_jax")

_SLURM_STEP = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")  # fmt: skip


class LaunchError(ValueError):
    """The flags or environment name a multi-process job incompletely."""


@dataclasses.dataclass(frozen=True)
class Plan:
    kind: str  # "explicit", "slurm", "tpu" or "none"
    # jax.distributed.initialize's arguments; empty: JAX detects them from the platform.
    arguments: dict = dataclasses.field(default_factory=dict)

    @property
    def multi_process(self) -> bool:
        return self.kind != "none"


def plan(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    mode: str = "auto",
    environ=None,
    tpu_vm: bool | None = None,
) -> Plan:
    """How this process joins its job (module doc). `mode` "off" forces one process."""
    environ = os.environ if environ is None else environ
    if mode == "off":
        return Plan("none")
    explicit = {
        "coordinator_address": coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS"),
        "num_processes": _int(num_processes, environ, "JAX_NUM_PROCESSES"),
        "process_id": _int(process_id, environ, "JAX_PROCESS_ID"),
    }
    given = [name for name, value in explicit.items() if value is not None]
    if len(given) == 3:
        if not 0 <= explicit["process_id"] < explicit["num_processes"]:
            raise LaunchError(
                f"--process_id {explicit['process_id']} is not one of the "
                f"{explicit['num_processes']} processes (0 .. num_processes - 1)"
            )
        return Plan("explicit", explicit)
    if given:
        missing = sorted(set(explicit) - set(given))
        raise LaunchError(
            f"a multi-process run needs --coordinator_address, --num_processes and "
            f"--process_id together; missing: {', '.join('--' + m for m in missing)}"
        )
    if all(name in environ for name in _SLURM_STEP) and int(environ["SLURM_NTASKS"]) > 1:
        return Plan("slurm")
    if tpu_vm if tpu_vm is not None else _on_cloud_tpu_vm():
        return Plan("tpu")
    return Plan("none")


def _int(value, environ, name: str) -> int | None:
    if value is not None:
        return int(value)
    text = environ.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise LaunchError(f"{name}={text!r} is not an integer") from None


def _on_cloud_tpu_vm() -> bool:
    """libtpu installed and TPU chips attached (PCI accelerators or VFIO devices)."""
    if importlib.util.find_spec("libtpu") is None:
        return False
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def start(launch: Plan) -> None:
    """Joins the job (a no-op for one process), then logs who this process is."""
    if launch.multi_process:
        jax.distributed.initialize(**launch.arguments)
    log.info(
        "JAX %s, process %d of %d (%s start), %d local of %d devices: %s",
        jax.__version__,
        jax.process_index(),
        jax.process_count(),
        launch.kind,
        jax.local_device_count(),
        jax.device_count(),
        jax.local_devices(),
    )


def stop(launch: Plan) -> None:
    if launch.multi_process:
        jax.distributed.shutdown()
