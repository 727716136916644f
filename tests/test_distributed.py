"""How `python -m sdn_jax.main` decides to join a multi-process job (sdn_jax.distributed)."""

import pytest

from sdn_jax import distributed

SRUN = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16",
        "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}  # fmt: skip


def _plan(*args, environ=None, tpu_vm=False, **kwargs):
    return distributed.plan(*args, environ=environ or {}, tpu_vm=tpu_vm, **kwargs)


def test_one_process_where_nothing_says_otherwise():
    assert _plan() == distributed.Plan("none")
    assert not _plan().multi_process


def test_explicit_flags_and_jax_variables():
    flags = _plan("127.0.0.1:1234", 2, 1)
    assert flags.kind == "explicit" and flags.multi_process
    assert flags.arguments == {"coordinator_address": "127.0.0.1:1234", "num_processes": 2,
                               "process_id": 1}  # fmt: skip
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "0"}  # fmt: skip
    assert _plan(environ=env).arguments["num_processes"] == 4
    # Explicit settings win over the platform's.
    assert _plan("h:1", 2, 0, environ=SRUN, tpu_vm=True).kind == "explicit"


def test_srun_steps_of_several_tasks_and_tpu_vms_start_by_themselves():
    assert _plan(environ=SRUN) == distributed.Plan("slurm")
    assert _plan(environ={**SRUN, "SLURM_NTASKS": "1"}).kind == "none"  # one task: no job
    assert _plan(environ={"SLURM_JOB_ID": "77"}).kind == "none"  # sbatch's shell, not srun
    assert _plan(tpu_vm=True) == distributed.Plan("tpu")
    assert _plan(environ=SRUN, tpu_vm=True, mode="off").kind == "none"


@pytest.mark.parametrize(
    "args, environ, message",
    [
        (("h:1", None, None), {}, "missing: --num_processes, --process_id"),
        ((None, 2, 0), {}, "missing: --coordinator_address"),
        (("h:1", 2, 2), {}, "--process_id 2 is not one of the 2 processes"),
        ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two",
                              "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES='two' is not an integer"),
    ],
)  # fmt: skip
def test_incomplete_or_wrong_settings_are_one_line_errors(args, environ, message):
    with pytest.raises(distributed.LaunchError, match=message):
        _plan(*args, environ=environ)
