"""The training loop: build everything, run steps, log, sample, checkpoint, evaluate.

`train_and_evaluate(config, workdir)` is what `python -m sdn_jax.main` calls. Re-running
it on the same workdir resumes from the newest valid checkpoint, with the input
pipeline where it was; a finished run is not retrained.
"""

import contextlib
import dataclasses
import json
import logging
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

import sdn_jax.data
from sdn_jax import checkpointing, compiler, run_identity, sharding, training_setup, workdir_lock
from sdn_jax import settings as settings_lib
from sdn_jax import state as state_lib
from sdn_jax.atomic_files import written_atomically
from sdn_jax.data import pipeline
from sdn_jax.evaluation import heldout
from sdn_jax.evaluation import outputs as outputs_lib
from sdn_jax.images import from_uint8
from sdn_jax.metric_writers import MetricWriter
from sdn_jax.preemption import StopRequests
from sdn_jax.progress import Progress
from sdn_jax.samples import write_samples
from sdn_jax.settings import Settings

log = logging.getLogger("sdn_jax")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stops before saving a bad state."""


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived: a checkpoint was saved and the run stopped cleanly."""


def load_split(settings: Settings, workdir: str, split: str):
    """The split's data source; process 0 prepares missing synthetic data first."""
    data = settings.data
    data_dir = data.data_dir or sdn_jax.data.default_data_dir(workdir)
    options = sdn_jax.data.dataset_options(data)
    if jax.process_index() == 0:
        sdn_jax.data.load_source(
            data.name, split, data.image_size, data_dir, manual_dir=data.manual_dir,
            prepare_if_missing=data.name == "synth_faces", **options,
        )  # fmt: skip
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"data prepared: {split}")
    return sdn_jax.data.load_source(data.name, split, data.image_size, data_dir, **options)


@contextlib.contextmanager
def claimed(config, settings: Settings, workdir: str, *, evaluating: bool = False):
    """This job's hold on the workdir for the block: its lock taken (workdir_lock), its
    settings checked against the run's (run_identity) and config.json written when it
    changes (never by `evaluating`), before anything else is written. Process 0 does it;
    in a multi-process job the others learn its answer, so that they all stop together."""
    with contextlib.ExitStack() as stack:
        refusal = None
        if jax.process_index() == 0:
            try:
                if not evaluating:
                    os.makedirs(workdir, exist_ok=True)
                stack.enter_context(workdir_lock.held(workdir, read_only_ok=evaluating))
                run_identity.check(workdir, settings)
                if evaluating:
                    _check_writable(os.path.join(workdir, "eval"))
                else:
                    run_identity.write_config(config, workdir)
            except (workdir_lock.WorkdirError, run_identity.RunIdentityError) as error:
                refusal = error
            except OSError as error:
                refusal = workdir_lock.WorkdirError(f"cannot write the run in {workdir}: {error}")
        if jax.process_count() > 1:
            refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
            if refused and refusal is None:
                refusal = workdir_lock.WorkdirError(f"process 0 refused {workdir} (it says why)")
        if refusal is not None:
            raise refusal
        yield


@dataclasses.dataclass
class Run:
    """One workdir's training: its set-up, data, checkpoints and metric files."""

    settings: Settings
    workdir: str
    setup: training_setup.TrainingSetup
    train_source: object
    eval_source: object
    checkpointer: checkpointing.Checkpointer
    writer: MetricWriter

    def close(self) -> None:
        self.checkpointer.close()
        self.writer.close()


def open_run(settings: Settings, workdir: str, *, evaluating: bool = False) -> Run:
    """Builds the set-up and opens the data, checkpoints and metric files (the workdir is
    `claimed` first). `evaluating` needs no write access outside eval/ (MetricWriter)."""
    setup = training_setup.build(settings)
    checkpointer = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=settings.train.max_checkpoints
    )
    return Run(
        settings=settings,
        workdir=workdir,
        setup=setup,
        train_source=load_split(settings, workdir, "train"),
        eval_source=load_split(settings, workdir, settings.eval.split),
        checkpointer=checkpointer,
        writer=MetricWriter(workdir, optional=evaluating),
    )


def initial_state(run: Run):
    """The newest valid checkpoint (state and data position), or a fresh state."""
    restored = run.checkpointer.restore_latest(run.setup.abstract_state)
    if restored is None:
        state = run.setup.create_state()
        counts = state_lib.parameter_counts(state.params)
        log.info("Parameters: %s (total %s)", counts, sum(counts.values()))
        return state, None
    log.info("Resuming from the checkpoint of step %d", restored.step)
    return restored.state, restored.data_state


def _fixed_eval_batch(source, count: int) -> np.ndarray:
    """The first `count` images of a split (the sample grid's rows, same every time)."""
    records = [source[i] for i in range(min(count, len(source)))]
    return from_uint8(np.stack([r["image"] for r in records]))


def train(run: Run):
    """Steps from the restored (or a fresh) state to train.num_steps; returns the state."""
    settings, t, setup = run.settings, run.settings.train, run.setup
    state, data_state = initial_state(run)
    start = int(state.step)
    if start >= t.num_steps:
        log.info("Step %d: training already finished (num_steps %d)", start, t.num_steps)
        return state
    iterator = pipeline.from_settings(settings, run.train_source, train=True)
    if data_state is not None:
        iterator.set_state(data_state)
    full_step, warmup_step = setup.train_step(), setup.classifier_warmup_step()
    samples = _fixed_eval_batch(run.eval_source, t.num_samples)
    outputs_fn = compiler.jit(outputs_lib.make_outputs_fn(setup.networks))
    sample_key = heldout.evaluation_keys(len(samples), settings.model)
    finite = _FiniteChecks(run, setup.mesh)
    progress = Progress(t.num_steps, t.global_batch_size)
    progress.program_starts(start)
    log.info("Training steps %d -> %d", start, t.num_steps)
    with StopRequests() as stop:
        for step in range(start + 1, t.num_steps + 1):
            batch = setup.global_batch(next(iterator))
            in_warmup = step <= t.classifier_warmup_steps
            if step == t.classifier_warmup_steps + 1 and start < t.classifier_warmup_steps:
                jax.block_until_ready(state)
                log.info("Classifier warm-up done; training every network")
                progress.program_starts(step - 1)  # The full step compiles now: time it apart.
            state, metrics = (warmup_step if in_warmup else full_step)(state, batch)
            if progress.compiling:
                jax.block_until_ready(metrics)
                progress.compiled(step, first_ever=step == start + 1)
            is_last = step == t.num_steps
            # Read once: a signal landing between the checks below must not skip the save.
            # Every process asks at every step (in a job, all of them stop at one step).
            stopping = stop.check(step)
            if step % t.log_every_steps == 0 or is_last or stopping:
                scalars = jax.device_get(metrics)  # waits for the steps in flight
                rate, stepping_rate = progress.rates(step)
                with progress.bookkeeping(state):
                    finite.losses(step, scalars)
                    scalars["perf/steps_per_s"] = rate
                    scalars["perf/images_per_s"] = rate * t.global_batch_size
                    scalars["perf/steps_per_s_excluding_bookkeeping"] = stepping_rate
                    run.writer.write(step, "train", scalars)
                    progress.report(step, scalars, rate, " (C warm-up)" if in_warmup else "")
            if step % t.sample_every_steps == 0 or is_last:
                with progress.bookkeeping(state):
                    params = state_lib.inference_params(state)
                    outputs = outputs_fn(params, jnp.asarray(samples), sample_key)
                    if jax.process_index() == 0:
                        write_samples(run.workdir, step, samples, jax.device_get(outputs))
            if step % t.checkpoint_every_steps == 0 or is_last or stopping:
                with progress.bookkeeping(state):
                    finite.losses(step, jax.device_get(metrics))
                    finite.state(step, state)
                    run.checkpointer.save(step, state, iterator.get_state(), force=True)
            if stopping:
                run.checkpointer.wait_until_finished()
                raise Interrupted(f"{stopping} at step {step}: checkpoint saved")
    run.checkpointer.wait_until_finished()
    return state


class _FiniteChecks:
    """Stops the run, without saving, at the first NaN/inf loss or state."""

    def __init__(self, run: Run, mesh):
        self.run = run
        self._counts = jax.jit(_nonfinite_counts, out_shardings=sharding.replicated(mesh))

    def losses(self, step: int, scalars: dict) -> None:
        bad = {k: float(v) for k, v in scalars.items() if not np.isfinite(v)}
        if bad:
            self.run.writer.write(step, "train", scalars)
            raise NonFiniteLossError(f"Non-finite loss at step {step}: {bad}. {self._last()}")

    def state(self, step: int, state) -> None:
        """A step's loss is computed before its update, so a finite loss does not mean a
        finite new state (an overflowing update): checked before every save."""
        bad = {k: int(v) for k, v in jax.device_get(self._counts(state)).items() if v}
        if bad:
            raise NonFiniteLossError(
                f"Non-finite parameters or optimizer state after step {step} (its loss was "
                f"finite; non-finite values per network: {bad}). {self._last()}"
            )

    def _last(self) -> str:
        last = self.run.checkpointer.latest_step()
        last = f"step {last}" if last is not None else "none"
        return f"Stopped without saving; the last good checkpoint is {last}."


def _nonfinite_counts(state) -> dict:
    """NaN/inf entries per network in a TrainState's params and optimizer states."""
    counts = {}
    for name, params in state.params.items():
        leaves = jax.tree.leaves((params, state.opt_state[name]))
        counts[name] = sum(
            jnp.sum(~jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)
        )
    return counts


def evaluate(run: Run, state) -> dict:
    """Held-out summary (test split by default), logged with split 'eval'."""
    settings, source = run.settings, run.eval_source
    count = min(settings.eval.num_images, len(source))
    subset = [source[i] for i in range(count)]
    batches = pipeline.eval_iterator(
        subset, global_batch_size=settings.eval.batch_size, process_index=0, process_count=1
    )
    log.info("Evaluating %d %s images", count, settings.eval.split)
    params = state_lib.inference_params(state)
    summary = heldout.evaluate_heldout(params, run.setup.networks, batches, settings.model)
    run.writer.write(int(state.step), "eval", summary)
    if jax.process_index() == 0:
        path = os.path.join(run.workdir, "eval", "heldout_summary.json")
        with written_atomically(path, "w") as f:
            record = {"step": int(state.step), "split": settings.eval.split, **summary}
            json.dump(record, f, indent=2)
    for key, value in summary.items():
        log.info("eval %-45s %s", key, f"{value:.4f}" if isinstance(value, float) else value)
    return summary


def _independent_evaluation(settings: Settings, workdir: str, step: int) -> None:
    """eval/report.json and report.md (sdn_jax.evaluation.evaluate), unless switched off
    with `eval.full_report = False` (the tiny test runs)."""
    if settings.eval.full_report:
        from sdn_jax.evaluation import evaluate  # noqa: PLC0415 (heavy; not every run needs it)

        evaluate.evaluate_run(settings, workdir, step=step)


def train_and_evaluate(config, workdir: str) -> dict:
    settings, workdir = settings_lib.from_config(config), os.path.abspath(workdir)
    with claimed(config, settings, workdir):
        run = open_run(settings, workdir)
        try:
            state = train(run)
            summary = evaluate(run, state)
        finally:
            run.close()
        _independent_evaluation(run.settings, run.workdir, int(state.step))
    return summary


def evaluate_only(config, workdir: str) -> dict:
    """The newest checkpoint evaluated; writes eval/ (and metrics.jsonl if it can), never
    config.json: a run may be evaluated where it cannot be written (its own settings stay
    on record; this config's eval settings apply)."""
    settings, workdir = settings_lib.from_config(config), os.path.abspath(workdir)
    if not run_identity.has_checkpoints(workdir):
        raise FileNotFoundError(f"No checkpoint to evaluate in {workdir}/checkpoints")
    with claimed(config, settings, workdir, evaluating=True):
        run = open_run(settings, workdir, evaluating=True)
        try:
            restored = run.checkpointer.restore_latest(run.setup.abstract_state)
            if restored is None:
                raise FileNotFoundError(f"No checkpoint to evaluate in {workdir}/checkpoints")
            summary = evaluate(run, restored.state)
        finally:
            run.close()
        _independent_evaluation(run.settings, run.workdir, int(restored.step))
    return summary


def _check_writable(folder: str) -> None:
    """The evaluation's results go to `folder`: refused at once if it cannot take them."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise workdir_lock.WorkdirError(
            f"--mode evaluate writes its results into {folder}, which cannot be written "
            f"({error.strerror}); the rest of the run is only read"
        ) from None
