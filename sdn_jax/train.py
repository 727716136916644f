"""The training loop: build everything, run steps, log, sample, checkpoint, evaluate.

`train_and_evaluate(config, workdir)` is what `python -m sdn_jax.main` calls. Re-running
it on the same workdir resumes from the newest valid checkpoint, with the input
pipeline where it was; a finished run is not retrained.
"""

import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

import sdn_jax.data
from sdn_jax import checkpointing, sharding, steps
from sdn_jax import state as state_lib
from sdn_jax.data import pipeline
from sdn_jax.evaluation import heldout
from sdn_jax.evaluation import outputs as outputs_lib
from sdn_jax.images import from_uint8
from sdn_jax.metric_writers import MetricWriter
from sdn_jax.samples import write_samples

log = logging.getLogger("sdn_jax")


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stops before saving a bad state."""


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived: a checkpoint was saved and the run stopped cleanly."""


def resolve_data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.data.data_dir or sdn_jax.data.default_data_dir(workdir)


def load_split(config, workdir: str, split: str):
    """The split's data source; process 0 prepares missing synthetic data first."""
    data = config.data
    data_dir = resolve_data_dir(config, workdir)
    options = sdn_jax.data.dataset_options(data)
    if jax.process_index() == 0:
        sdn_jax.data.load_source(
            data.name, split, data.image_size, data_dir, manual_dir=data.manual_dir,
            prepare_if_missing=data.name == "synth_faces", **options,
        )  # fmt: skip
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"data prepared: {split}")
    return sdn_jax.data.load_source(data.name, split, data.image_size, data_dir, **options)


def num_train_identities(config, source) -> int:
    """Classes of the classifier's identity head: the people of the train split."""
    if config.data.name == "synth_faces":
        return config.data.num_train_identities
    from sdn_jax.data import celeba

    release = celeba.read_release(config.data.manual_dir)
    return len(np.unique(release.identity_raw[release.partition == 0]))


def write_config(config, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _fixed_eval_batch(source, count: int) -> dict:
    """The first `count` records of a split (the sample grid's rows, same every time)."""
    records = [source[i] for i in range(min(count, len(source)))]
    images = from_uint8(np.stack([r["image"] for r in records]))
    return {"image": images}


# What the progress line shows, when the step reports it (C's warm-up has no g, d, ...).
_PROGRESS_LOSSES = (
    ("g", "loss/g_total"),
    ("d", "loss/d_total"),
    ("c", "loss/c_total"),
    ("recovery", "loss/recovery"),
    ("c_key_attr_acc", "loss/c_train_key_attribute_accuracy"),
)


class Trainer:
    """Everything one run needs; `train()` then `evaluate()`."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config, self.workdir = config, os.path.abspath(workdir)
        workdir = self.workdir
        os.makedirs(workdir, exist_ok=True)
        write_config(config, workdir)
        self.mesh = sharding.make_mesh(config.mesh)
        sharding.check_batch_size(config.train.global_batch_size, self.mesh)
        sharding.check_batch_size(
            steps.generator_batch_size(config), self.mesh, "train.generator_batch_size"
        )
        self.train_source = load_split(config, workdir, "train")
        self.eval_source = load_split(config, workdir, config.eval.split)
        self.networks = state_lib.build_networks(
            config, num_train_identities(config, self.train_source)
        )
        self.optimizers = state_lib.build_optimizers(config)
        init_rng, self.step_rng = jax.random.split(jax.random.key(config.seed))
        create = lambda: state_lib.create_state(init_rng, self.networks, self.optimizers, config)
        abstract = jax.eval_shape(create)
        self.state_sharding = sharding.state_shardings(abstract, self.mesh)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract,
            self.state_sharding,
        )
        # Runs once: LLVM optimisation would only add compile time (~30 s -> ~5 s without).
        self._create = jax.jit(
            create,
            out_shardings=self.state_sharding,
            compiler_options={"xla_backend_optimization_level": 0},
        )
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.checkpointer = checkpointing.Checkpointer(
            os.path.join(workdir, "checkpoints"), max_to_keep=config.train.max_checkpoints
        )
        self.writer = MetricWriter(workdir)
        self._nonfinite_counts = jax.jit(
            _nonfinite_counts, out_shardings=sharding.replicated(self.mesh)
        )

    def initial_state(self):
        """The newest valid checkpoint (state and data position), or a fresh state."""
        restored = self.checkpointer.restore_latest(self.abstract_state)
        if restored is None:
            state = self._create()
            counts = state_lib.parameter_counts(state.params)
            log.info("Parameters: %s (total %s)", counts, sum(counts.values()))
            return state, None
        log.info("Resuming from the checkpoint of step %d", restored.step)
        return restored.state, restored.data_state

    def train(self) -> object:
        config, t = self.config, self.config.train
        state, data_state = self.initial_state()
        start = int(state.step)
        if start >= t.num_steps:
            log.info("Step %d: training already finished (num_steps %d)", start, t.num_steps)
            return state
        iterator = pipeline.from_config(config, self.train_source, train=True)
        if data_state is not None:
            iterator.set_state(data_state)
        train_step = jax.jit(
            steps.make_train_step(self.networks, self.optimizers, config, self.step_rng),
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
            donate_argnums=0,
        )
        warmup_step = jax.jit(
            steps.make_classifier_warmup_step(
                self.networks, self.optimizers, config, self.step_rng
            ),
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, sharding.replicated(self.mesh)),
            donate_argnums=0,
        )
        warmup_steps = t.get("classifier_warmup_steps", 0)
        samples = _fixed_eval_batch(self.eval_source, t.num_samples)
        outputs_fn = jax.jit(outputs_lib.make_outputs_fn(self.networks))
        sample_key = heldout.evaluation_keys(len(samples["image"]), config)
        log.info("Training steps %d -> %d", start, t.num_steps)
        last_time, last_step, compiled_at = time.perf_counter(), start, None
        start_time = last_time
        with _StopSignal() as stop:
            for step in range(start + 1, t.num_steps + 1):
                batch = sharding.global_batch(
                    {k: v for k, v in next(iterator).items()}, self.batch_sharding
                )
                in_warmup = step <= warmup_steps
                if step == warmup_steps + 1 and start < warmup_steps:
                    jax.block_until_ready(state)
                    log.info("Classifier warm-up done; training every network")
                    compiled_at = None  # The full step compiles now: time it apart.
                    last_time = start_time = time.perf_counter()
                    last_step = step - 1
                state, metrics = (warmup_step if in_warmup else train_step)(state, batch)
                if compiled_at is None:
                    jax.block_until_ready(metrics)
                    compiled_at = time.perf_counter()
                    log.info(
                        "First step%s (compile + run) took %.1f s",
                        "" if step == start + 1 else " after the warm-up",
                        compiled_at - last_time,
                    )
                    last_time, last_step = compiled_at, step
                is_last = step == t.num_steps
                # Read once: a signal landing between the checks below must not skip the save.
                stopping = stop.received
                if step % t.log_every_steps == 0 or is_last or stopping:
                    scalars = jax.device_get(metrics)
                    self._check_finite(step, scalars)
                    now = time.perf_counter()
                    if step > last_step:
                        rate = (step - last_step) / max(now - last_time, 1e-9)
                    else:  # The first step is a log step: only its own time is known.
                        rate = 1.0 / max(compiled_at - start_time, 1e-9)
                    last_time, last_step = now, step
                    scalars["perf/steps_per_s"] = rate
                    scalars["perf/images_per_s"] = rate * t.global_batch_size
                    self.writer.write(step, "train", scalars)
                    eta = (t.num_steps - step) / max(rate, 1e-9)
                    losses_text = "  ".join(
                        f"{name} {scalars[key]:.3f}"
                        for name, key in _PROGRESS_LOSSES
                        if key in scalars
                    )
                    log.info(
                        "step %d/%d%s  %s  %.2f steps/s  %.0f img/s  ETA %s",
                        step, t.num_steps, " (C warm-up)" if in_warmup else "", losses_text,
                        rate, rate * t.global_batch_size, _format_seconds(eta),
                    )  # fmt: skip
                if step % t.sample_every_steps == 0 or is_last:
                    outputs = outputs_fn(
                        state_lib.inference_params(state), jnp.asarray(samples["image"]), sample_key
                    )
                    if jax.process_index() == 0:
                        write_samples(self.workdir, step, samples["image"], jax.device_get(outputs))
                if step % t.checkpoint_every_steps == 0 or is_last or stopping:
                    self._check_finite(step, jax.device_get(metrics))
                    self._check_finite_state(step, state)
                    self.checkpointer.save(step, state, iterator.get_state(), force=True)
                if stopping:
                    self.checkpointer.wait_until_finished()
                    raise Interrupted(f"{stopping} at step {step}: checkpoint saved")
        self.checkpointer.wait_until_finished()
        return state

    def _check_finite(self, step: int, scalars: dict) -> None:
        bad = {k: float(v) for k, v in scalars.items() if not np.isfinite(v)}
        if bad:
            self.writer.write(step, "train", scalars)
            raise NonFiniteLossError(
                f"Non-finite loss at step {step}: {bad}. {self._stopped_without_saving()}"
            )

    def _check_finite_state(self, step: int, state) -> None:
        """A step's loss is computed before its update, so a finite loss does not mean a
        finite new state (an overflowing update): checked before every save."""
        bad = {k: int(v) for k, v in jax.device_get(self._nonfinite_counts(state)).items() if v}
        if bad:
            raise NonFiniteLossError(
                f"Non-finite parameters or optimizer state after step {step} (its loss was "
                f"finite; non-finite values per network: {bad}). {self._stopped_without_saving()}"
            )

    def _stopped_without_saving(self) -> str:
        last = self.checkpointer.latest_step()
        last = f"step {last}" if last is not None else "none"
        return f"Stopped without saving; the last good checkpoint is {last}."

    def evaluate(self, state) -> dict:
        """Held-out summary (test split by default), logged with split 'eval'."""
        config = self.config
        source = self.eval_source
        count = min(config.eval.num_images, len(source))
        subset = [source[i] for i in range(count)]
        batches = pipeline.eval_iterator(
            subset, global_batch_size=config.eval.batch_size, process_index=0, process_count=1
        )
        log.info("Evaluating %d %s images", count, config.eval.split)
        summary = heldout.evaluate_heldout(
            state_lib.inference_params(state), self.networks, batches, config
        )
        self.writer.write(int(state.step), "eval", summary)
        if jax.process_index() == 0:
            os.makedirs(os.path.join(self.workdir, "eval"), exist_ok=True)
            with open(os.path.join(self.workdir, "eval", "heldout_summary.json"), "w") as f:
                json.dump(
                    {"step": int(state.step), "split": config.eval.split, **summary}, f, indent=2
                )
        for key, value in summary.items():
            log.info("eval %-45s %s", key, f"{value:.4f}" if isinstance(value, float) else value)
        return summary

    def close(self) -> None:
        self.checkpointer.close()
        self.writer.close()


def _nonfinite_counts(state) -> dict:
    """NaN/inf entries per network in a TrainState's params and optimizer states."""
    counts = {}
    for name, params in state.params.items():
        leaves = jax.tree.leaves((params, state.opt_state[name]))
        counts[name] = sum(
            jnp.sum(~jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)
        )
    return counts


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _independent_evaluation(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
    """eval/report.json and report.md (sdn_jax.evaluation.evaluate), unless switched off
    with `config.eval.full_report = False` (the tiny test runs)."""
    if config.eval.get("full_report", True):
        from sdn_jax.evaluation import evaluate  # noqa: PLC0415 (heavy; not every run needs it)

        evaluate.evaluate_run(config, workdir, step=step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    trainer = Trainer(config, workdir)
    try:
        state = trainer.train()
        summary = trainer.evaluate(state)
    finally:
        trainer.close()
    _independent_evaluation(config, workdir, int(state.step))
    return summary


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict:
    trainer = Trainer(config, workdir)
    try:
        restored = trainer.checkpointer.restore_latest(trainer.abstract_state)
        if restored is None:
            raise FileNotFoundError(f"No checkpoint to evaluate in {workdir}/checkpoints")
        summary = trainer.evaluate(restored.state)
    finally:
        trainer.close()
    _independent_evaluation(config, workdir, int(restored.step))
    return summary
