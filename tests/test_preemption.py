"""Stopping for a signal: one process reads its own flag; in a multi-process job every
process stops at the one step that JAX's preemption service agrees on (sdn_jax.preemption)."""

import os
import signal
import textwrap

from test_checkpointing import _run_two_processes

from sdn_jax.preemption import StopRequests


def test_one_process_stops_after_the_step_where_the_signal_came():
    with StopRequests() as stop:
        assert stop.check(1) is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.check(2) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is given back


# Process 1 alone gets Ctrl-C (SIGINT) at step 3; both must stop at the same later step.
_SCRIPT = """
import os, signal, sys, time
import jax
from jax.experimental import multihost_utils
port, pid = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
from sdn_jax.preemption import StopRequests
with StopRequests() as stop:
    for step in range(1, 400):
        multihost_utils.sync_global_devices(f"step {step}")  # lockstep, as training steps are
        if pid == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        if stop.check(step):
            break
        time.sleep(0.02)
print("STOPPED AT", step, flush=True)
jax.distributed.shutdown()
"""


def test_processes_of_a_job_stop_at_the_same_step(tmp_path):
    results = _run_two_processes(textwrap.dedent(_SCRIPT), tmp_path)
    stops = []
    for code, out in results:
        assert code == 0, out[-3000:]
        stops.append(int(out.split("STOPPED AT")[1].split()[0]))
    assert stops[0] == stops[1] > 3, stops
    assert stops[0] < 399  # it did stop
