"""The training loop's step rates: the whole loop, and the steps without bookkeeping."""

import time

import jax.numpy as jnp
import pytest

from sdn_jax.progress import Progress


def test_bookkeeping_counts_in_the_loop_rate_only():
    progress = Progress(num_steps=100, images_per_step=8)
    progress.program_starts(0)
    progress.compiled(1, first_ever=True)
    time.sleep(0.05)  # "stepping" to step 11
    with progress.bookkeeping(jnp.zeros(3)):
        time.sleep(0.2)
    loop, steps_only = progress.rates(11)
    assert loop == pytest.approx(10 / 0.25, rel=0.3)
    assert steps_only == pytest.approx(10 / 0.05, rel=0.5)
    assert steps_only > 2 * loop
    # The next window starts afresh: no bookkeeping in it.
    time.sleep(0.05)
    loop, steps_only = progress.rates(21)
    assert steps_only == pytest.approx(loop, rel=0.05)
