"""Checkpoints of the training state and the input pipeline's position, over Orbax.

A checkpoint step is a folder `<directory>/<step>/` of an Orbax `CheckpointManager`:
  state/  the state pytree (params, optax states, step) by `ocp.args.StandardSave`; each
          process writes its own shards of sharded `jax.Array`s.
  data/   the grain iterator states, one `process_<i>-of-<n>.json` per JAX process, by
          grain's own Orbax handler (`grain.checkpoint.CheckpointSave`), as in MaxText.
          Orbax's `JsonSave` would not do: only the primary process writes it, so the
          other processes' positions in their shares of the data would be lost.
Both in one step is what lets a resumed run see the same data stream as an uninterrupted
one, also in a job with another number of processes or devices (`_other_job_data_state`).
Every JAX process must call `save` and `restore_latest` (Orbax synchronises them),
all with the same shared `directory`.

Orbax has no fallback of its own (a corrupt or empty newest step still counts as the
latest, and restoring it raises), so `restore_latest` walks the steps from the newest down.
"""

import dataclasses
import json
import logging
import os
import sys
from typing import Any

import grain.checkpoint
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

_log = logging.getLogger(__name__)

STATE = "state"
DATA = "data"

# A step folder that `restore_latest` found unusable is renamed to `<step><suffix>`: a name
# Orbax does not take for a step, so it no longer blocks saves or counts as the latest.
INVALID_SUFFIX = ".invalid"


class NoValidCheckpointError(RuntimeError):
    """Checkpoints exist, but none of them could be restored."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored step; `data_state` is this process's `it.get_state()` at save time (None
    if saved without one), for `set_state` on a freshly built iterator."""

    step: int
    state: Any
    data_state: dict | None


class _JsonState:
    """A JSON-able iterator state, in the shape grain's Orbax handler expects.

    The handler calls `get_state()` / `set_state()` / `start_prefetch()` on what it is given
    and, for anything but a grain `DatasetIterator`, exchanges JSON text as bytes. A snapshot
    instead of the live iterator saves the position at the call to `save`, and a restored
    state can go to an iterator built later. The JSON is made here, so a state that is not
    JSON fails in `save`, not in a background thread.
    """

    def __init__(self, state: dict | None = None):
        self._json = None if state is None else json.dumps(state, indent=4).encode()

    def get_state(self) -> bytes:
        return self._json

    def set_state(self, state: bytes) -> None:
        self._json = state

    def start_prefetch(self) -> None:
        pass

    @property
    def value(self) -> dict:
        return json.loads(self._json)


class Checkpointer:
    """Saves and restores (state, data state) steps in one folder; see the module doc.

    Args:
      directory: where the step folders go; created if missing. Other files in it are left
        alone (Orbax only ever deletes step folders beyond `max_to_keep`).
      max_to_keep: how many of the newest steps to keep; None keeps all.
      async_save: write the arrays in a background thread, so that training goes on while
        they are written (`save` still copies them off the devices before returning).
    """

    def __init__(self, directory: epath.PathLike, *, max_to_keep: int | None = 3, async_save=True):
        # Orbax's OCDBT writer rejects relative paths (and only when a save runs, in the
        # background): `--workdir runs/default` must work, so resolve local paths here.
        if "://" not in str(directory):
            directory = os.path.abspath(directory)
        self.directory = epath.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._closed = False

    def all_steps(self) -> list[int]:
        """Steps on disk, oldest first, including any that `restore_latest` would skip."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest step on disk (valid or not), or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict | None = None, *, force=False) -> bool:
        """Starts saving `state` and `data_state` as checkpoint `step`; True if it did.

        `data_state` is this process's `iterator.get_state()` (a JSON-able dict); each
        process passes its own. An existing step is never overwritten (this logs a warning
        and returns False). A step older than the newest one is skipped, as Orbax does,
        unless `force`. With `async_save` the write goes on after this returns; call
        `wait_until_finished()` before reading the folder.
        """
        step = int(step)
        items = {STATE: ocp.args.StandardSave(state)}
        if data_state is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(_JsonState(data_state))
        if step in self._manager.all_steps():
            _log.warning("Not saving step %d: %s already holds it.", step, self.directory)
            return False
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore_latest(self, abstract_state: Any) -> Restored | None:
        """Restores the newest step that can be restored; None if there is no step at all.

        `abstract_state` is the state's pytree of `jax.ShapeDtypeStruct`s with shardings (as
        `jax.eval_shape` + the shardings give it): without it Orbax would return optax states
        as plain lists and put arrays wherever it likes.

        A step that fails to restore (truncated, garbled, empty: an interrupted copy, a full
        disk) is logged as a warning and the one before it is tried. Once an older step
        restores, the newer failed ones are renamed to `<step>.invalid` (kept, not deleted):
        otherwise Orbax would still take them for the latest step, skip every save up to
        that number and let `max_to_keep` prune good steps first. If no step restores,
        nothing is renamed (a changed state structure is then likelier than corruption) and
        `NoValidCheckpointError` is raised.
        """
        self.wait_until_finished()  # A save still in flight is not in `all_steps()` yet.
        silence_failed_restore_noise()  # Before any try: the noise can beat the except.
        failed = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._restore(step, abstract_state)
            except Exception as error:  # Any failure makes this step unusable; try older ones.
                _log.warning(
                    "Checkpoint step %d in %s cannot be restored, trying an older one. %s: %s",
                    step,
                    self.directory,
                    type(error).__name__,
                    _first_line(error),
                )
                failed.append((step, error))
                continue
            _check_same_step(step)
            if failed:
                self._set_aside([s for s, _ in failed])
            return restored
        if not failed:
            return None
        steps = ", ".join(str(s) for s, _ in failed)
        last_step, last_error = failed[-1]
        raise NoValidCheckpointError(
            f"None of the checkpoints in {self.directory} (steps {steps}) could be restored into "
            "the given state structure; the errors were logged as warnings. Does the config "
            "(model sizes, optimiser, number of processes) match the run that wrote them? "
            f"Step {last_step} failed with {type(last_error).__name__}: {_first_line(last_error)}"
        ) from last_error

    def _restore(self, step: int, abstract_state: Any) -> Restored:
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        data = _JsonState()
        folder = self.directory / str(step) / DATA
        # A step saved without a data state has no data item, and asking for it would fail;
        # one saved by another number of processes has no file for this process (below).
        own = folder / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if own.exists():
            items[DATA] = grain.checkpoint.CheckpointRestore(data)
        out = self._manager.restore(step, args=ocp.args.Composite(**items))
        if DATA in items:
            data_state = data.value
        else:
            data_state = _other_job_data_state(folder)
        return Restored(step=step, state=out[STATE], data_state=data_state)

    def _set_aside(self, steps: list[int]) -> None:
        """Renames step folders out of Orbax's sight (the primary process does it once)."""
        _sync("sdn_checkpointing_set_aside_start")
        if jax.process_index() == 0:
            for step in steps:
                source = self.directory / str(step)
                target = self.directory / f"{step}{INVALID_SUFFIX}"
                n = 1
                while target.exists():
                    n += 1
                    target = self.directory / f"{step}{INVALID_SUFFIX}-{n}"
                source.rename(target)
                _log.warning("Moved unrestorable checkpoint step %s to %s.", source, target)
        _sync("sdn_checkpointing_set_aside_done")
        self._manager.reload()

    def wait_until_finished(self) -> None:
        """Blocks until the saves in flight are on disk (and old steps pruned)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for saves in flight, then releases Orbax's threads. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self.wait_until_finished()
            self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _other_job_data_state(folder: epath.Path) -> dict | None:
    """The data position saved by a job with another number of processes, or None.

    sdn_jax.data.pipeline's training iterators count global batches, the same number in
    every process of a job, so process 0's saved position is every process's position in a
    job of any size (the checkpoint's arrays are resharded by Orbax as they are read)."""
    saved = sorted(folder.glob("process_0-of-*.json")) if folder.exists() else []
    if not saved:
        return None
    _log.info("Data position from %s (a job with another number of processes)", saved[0].name)
    return json.loads(saved[0].read_text())


def _first_line(error: BaseException) -> str:
    """The head of an error message (tensorstore's run to kilobytes of spec)."""
    return (str(error).strip().splitlines() or [repr(error)])[0][:500]


def _check_same_step(step: int) -> None:
    """All processes must resume from one step: a mix of shards would be a broken state."""
    if jax.process_count() > 1:
        message = "JAX processes restored different checkpoint steps; is the folder shared?"
        multihost_utils.assert_equal(np.int64(step), message)


def _sync(name: str) -> None:
    """A barrier across JAX processes (a no-op in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def silence_failed_restore_noise() -> None:
    """Drops the leftovers of a failed restore that tensorstore and asyncio print later.

    When one array read fails, Orbax's asyncio loop ends while tensorstore's other reads
    run on: their callbacks raise RuntimeError('Event loop is closed') in tensorstore's
    threads ("Exception ignored in: None"), and their failed futures are logged as "Future
    exception was never retrieved" when collected. Harmless, but they look like a crash next
    to our fallback warning. This wraps `sys.unraisablehook` and filters the "asyncio"
    logger (once per process) to drop exactly those two; everything else passes.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_failed_restore_noise", False):
        return

    def hook(unraisable):
        error, tb = unraisable.exc_value, unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if not (
            isinstance(error, RuntimeError)
            and str(error) == "Event loop is closed"
            and tb is not None
            and "asyncio" in tb.tb_frame.f_code.co_filename
        ):
            previous(unraisable)

    hook._drops_failed_restore_noise = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_keep_asyncio_record)


def _keep_asyncio_record(record: logging.LogRecord) -> bool:
    """False for asyncio's report of a tensorstore read that failed and was not awaited."""
    error = record.exc_info[1] if record.exc_info else None
    return not (
        record.getMessage().startswith("Future exception was never retrieved")
        and "tensorstore_spec" in str(error)
    )
