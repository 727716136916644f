"""Progress of the training loop: step rate, images per second, ETA, the headline losses.

The first step of each compiled program (C's warm-up, then the full step) is timed
apart, so compile time never counts in the step rate. The rate is given twice: over the
whole loop, and over the steps alone, without the time spent in `bookkeeping()` (logging,
sample grids, checkpoint saves).
"""

import contextlib
import logging
import time

import jax

log = logging.getLogger("sdn_jax")

# What the progress line shows, when the step reports it (C's warm-up has no g, d, ...).
_HEADLINE = (
    ("g", "loss/g_total"),
    ("d", "loss/d_total"),
    ("c", "loss/c_total"),
    ("recovery", "loss/recovery"),
    ("c_key_attr_acc", "loss/c_train_key_attribute_accuracy"),
)


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Call `program_starts(step)` before the first step of a newly compiled program,
    `compiled(step)` after its first step, `rates(step)` at a log step, and wrap what the
    loop does besides stepping in `bookkeeping(...)`."""

    def __init__(self, num_steps: int, images_per_step: int):
        self.num_steps, self.images_per_step = num_steps, images_per_step
        self._last_time, self._last_step = time.perf_counter(), 0
        self._start_time, self._compiled_at = self._last_time, None
        self._bookkeeping_seconds = 0.0  # since the last log step

    def program_starts(self, step_before: int) -> None:
        self._last_time = self._start_time = time.perf_counter()
        self._last_step, self._compiled_at = step_before, None

    @property
    def compiling(self) -> bool:
        """True until the current program's first step has finished."""
        return self._compiled_at is None

    def compiled(self, step: int, first_ever: bool) -> None:
        """The current program's first step finished (the caller waited for it)."""
        self._compiled_at = time.perf_counter()
        self._bookkeeping_seconds = 0.0
        log.info(
            "First step%s (compile + run) took %.1f s",
            "" if first_ever else " after the warm-up",
            self._compiled_at - self._last_time,
        )
        self._last_time, self._last_step = self._compiled_at, step

    @contextlib.contextmanager
    def bookkeeping(self, pending):
        """Times the block as time outside the steps. `pending` (the state) is waited for
        first: steps the device still runs count as stepping, not as bookkeeping."""
        jax.block_until_ready(pending)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._bookkeeping_seconds += time.perf_counter() - start

    def rates(self, step: int) -> tuple[float, float]:
        """Steps per second since the previous log step (compiling excluded): over the
        whole loop, and over the steps alone (bookkeeping excluded)."""
        now = time.perf_counter()
        if step > self._last_step:
            steps, seconds = step - self._last_step, now - self._last_time
        else:  # The first step is a log step: only its own time is known.
            steps, seconds = 1, self._compiled_at - self._start_time
        stepping = seconds - self._bookkeeping_seconds
        self._last_time, self._last_step, self._bookkeeping_seconds = now, step, 0.0
        return steps / max(seconds, 1e-9), steps / max(stepping, 1e-9)

    def report(self, step: int, scalars: dict, rate: float, note: str = "") -> None:
        eta = (self.num_steps - step) / max(rate, 1e-9)
        losses = "  ".join(
            f"{name} {scalars[key]:.3f}" for name, key in _HEADLINE if key in scalars
        )
        log.info(
            "step %d/%d%s  %s  %.2f steps/s  %.0f img/s  ETA %s",
            step, self.num_steps, note, losses, rate, rate * self.images_per_step,
            format_seconds(eta),
        )  # fmt: skip
