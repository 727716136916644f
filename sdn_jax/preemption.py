"""When the training loop must stop for a signal: SIGTERM (a preemption notice, `kill`) or
SIGINT (Ctrl-C), with a checkpoint saved at the step where it stops.

One process: a Python handler sets a flag that the loop reads between steps.

Several processes: the checkpoint save is collective, so every process must stop at the
same step, but a signal reaches the hosts at different steps (or only one of them). JAX's
preemption service, started with the distributed runtime, catches SIGTERM itself, tells
the other processes through the coordinator, and they agree on the first step that all
of them have yet to finish; Orbax's `reached_preemption(step)` is True at that step on
every process and nowhere else. So SIGTERM is left to that service (a Python handler
would replace its own), and SIGINT is turned into a SIGTERM to this process.
"""

import os
import signal

import jax
from orbax.checkpoint import multihost as ocp_multihost


class StopRequests:
    """Use as a context manager around the loop; `check(step)` after every step returns
    why to stop after that step (save, then stop), or None."""

    def __init__(self):
        self._received = None
        self._previous = {}
        self._shared = False

    def __enter__(self) -> "StopRequests":
        self._shared = jax.process_count() > 1
        mine = (signal.SIGINT,) if self._shared else (signal.SIGINT, signal.SIGTERM)
        for sig in mine:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self._shared:  # to JAX's preemption service, which owns SIGTERM here
            os.kill(os.getpid(), signal.SIGTERM)
        self._received = signal.Signals(signum).name

    def check(self, step: int) -> str | None:
        """Every process must call this at every step in a multi-process job."""
        if self._shared:
            if ocp_multihost.reached_preemption(step):
                return "a preemption notice (SIGTERM or SIGINT) to the job"
            return None
        return self._received

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
