"""Throughput benchmarks, one section per part of the system.

    python -m sdn_jax.benchmark [SECTION ...] --config configs/default.py --out bench.json

No SECTION runs them all. Prints a table and writes JSON (INTERFACES.md):
`{"device": ..., "num_devices": ..., "<section>": {"images_per_s": ..., ...}, ...}`.
`--vs-torch` also times the train step in PyTorch (benchmarks/torch_reference.py, from
the repository root with torch installed) and adds `torch` and the ratios to train_step.
A section is one function `(settings, options) -> dict` registered in `SECTIONS`; add one
there and it becomes a command-line choice.
"""

import dataclasses
import importlib
import json
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import sdn_jax.data
from sdn_jax import inference
from sdn_jax import settings as settings_lib
from sdn_jax.data import builders, pipeline
from sdn_jax.data import synth as synth_faces
from sdn_jax.settings import Settings

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (ml_collections).")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON results (optional).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    None,
    "Where TFDS keeps prepared data. Default: config.data.data_dir, else $TFDS_DATA_DIR, "
    "else runs/tensorflow_datasets (where `sdn_jax.main --workdir runs/...` keeps it).",
)
_NUM_BATCHES = flags.DEFINE_integer(
    "num_batches", None, "Batches to time per section. Default: as many as fit in --seconds."
)
_SECONDS = flags.DEFINE_float(
    "seconds", 5.0, "Time budget per section when --num_batches is unset."
)
_WARMUP_BATCHES = flags.DEFINE_integer(
    "warmup_batches", 5, "Untimed batches first (thread and worker start-up, caches)."
)
_VS_TORCH = flags.DEFINE_bool(
    "vs_torch",
    False,
    "train_step: also time the same networks and step in PyTorch, eager and under "
    "torch.compile, same batch and threads (benchmarks/torch_reference.py; needs torch: "
    "requirements-bench.txt), and JAX's steps/s over each.",
)
flags.DEFINE_alias("vs-torch", "vs_torch")  # INTERFACES.md spells it with a dash
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "A trained run for the anonymize section (its own config then). Default: freshly "
    "initialised weights of --config (the speed does not depend on the weights).",
)


@dataclasses.dataclass(frozen=True)
class Options:
    """What every section may use besides the config."""

    data_dir: str
    num_batches: int | None = None  # None: run for `seconds`.
    seconds: float = 5.0
    warmup_batches: int = 5
    workdir: str | None = None  # a trained run, for the anonymize section
    vs_torch: bool = False  # train_step: also time the PyTorch reference


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _timed(step: Callable[[], object], options: Options) -> tuple[int, float]:
    """(steps, seconds) of calling `step` for --num_batches or --seconds, after warm-up."""
    for _ in range(options.warmup_batches):
        step()
    count, start = 0, time.perf_counter()
    while True:
        step()
        count += 1
        elapsed = time.perf_counter() - start
        if options.num_batches is not None:
            if count >= options.num_batches:
                return count, elapsed
        elif elapsed >= options.seconds:
            return count, elapsed


def input_pipeline(settings: Settings, options: Options) -> dict:
    """Training batches per second out of the grain pipeline, this process alone."""
    data = settings.data
    _log(f"input_pipeline: preparing {data.name} at {data.image_size}px in {options.data_dir}")
    builder = builders.prepare(
        data.name,
        data.image_size,
        options.data_dir,
        manual_dir=data.manual_dir,
        **sdn_jax.data.dataset_options(data),
    )
    source = builder.as_data_source("train")
    iterator = pipeline.from_settings(settings, source, train=True)
    batch_size = settings.train.global_batch_size // jax.process_count()
    _log(
        f"input_pipeline: {len(source)} train records, batch {batch_size}, "
        f"{data.worker_count} workers; timing"
    )
    try:
        num_batches, seconds = _timed(lambda: next(iterator), options)
    finally:
        iterator.close()
    return {
        "images_per_s": num_batches * batch_size / seconds,
        "batch_size": batch_size,
        "image_size": data.image_size,
        "num_batches": num_batches,
        "seconds": seconds,
        "worker_count": data.worker_count,
    }


def synth_faces_renderer(settings: Settings, options: Options) -> dict:
    """Synthetic faces rendered per second (numpy, one thread), at the config's size.

    Bounds how fast the synthetic set prepares; training reads prepared data.
    """
    size = settings.data.image_size
    size = size if size in synth_faces.IMAGE_SIZES else 64
    batch = 256
    counter = iter(range(10**9))

    def render():
        first = next(counter) * batch
        people = np.arange(first, first + batch) // 24
        synth_faces.render_faces(people, np.arange(batch) % 24, size)

    _log(f"synth_faces_renderer: batches of {batch} at {size}px; timing")
    num_batches, seconds = _timed(render, options)
    return {
        "images_per_s": num_batches * batch / seconds,
        "batch_size": batch,
        "image_size": size,
        "num_batches": num_batches,
        "seconds": seconds,
    }


def anonymize(settings: Settings, options: Options) -> dict:
    """Faces anonymized per second by the model's jitted E + G (no file IO), in the fixed
    batches that `python -m sdn_jax.anonymize` uses."""
    if options.workdir:
        model = inference.load(options.workdir)
        weights = f"{model.source} step {model.step}"
    else:
        model = inference.initialised(settings)
        weights = "initialised"
    size, batch = model.image_size, model.batch_size
    images = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    choices = {name: False for name in model.key_attributes}
    # Any key will do (scrypt is not timed): version 1's needs no salt.
    key = inference.make_key("benchmark passphrase", choices, model.model_settings, kdf_version=1)
    _log(f"anonymize: {weights}, batches of {batch} at {size}px; timing")
    num_batches, seconds = _timed(lambda: model.anonymize(images, key), options)
    return {
        "images_per_s": num_batches * batch / seconds,
        "batch_size": batch,
        "image_size": size,
        "num_batches": num_batches,
        "seconds": seconds,
        "weights": weights,
    }


# Dense bf16 peaks from the datasheets, by jax's device_kind (sources: sdn_jax/scaling_model.py).
# MFU is against this peak in both dtypes: float32 matmuls run at most at that rate (TF32
# on H100 at half of it; one bf16 pass on TPUs at the default precision).
DATASHEET_BF16_PEAK = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v4": 275e12,
}


def _peak_flops_per_s(options: Options, dtype: str = "float32", size: int = 2048) -> float:
    """Measured matmul FLOP/s in `dtype` on the default device: the denominator of MFU when
    the device's datasheet peak is not known (a CPU's is not)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    count, seconds = _timed(lambda: matmul(a).block_until_ready(), options)
    return 2.0 * size**3 * count / seconds


def train_step(settings: Settings, options: Options) -> dict:
    """Full SDN train steps per second (every network updated; the classifier warm-up
    steps are not timed) on random images, with XLA's FLOP count of the compiled step.
    FLOPs, achieved and peak FLOP/s are the whole mesh's (every device's share)."""
    from sdn_jax import training_setup

    batch_size, size = settings.train.global_batch_size, settings.data.image_size
    setup = training_setup.build(settings)
    state = setup.create_state()
    batch = setup.global_batch(training_setup.random_batch(settings))
    step_fn = setup.train_step()
    _log(f"train_step: compiling ({size}px, global batch {batch_size})")
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA counts one device's share of a sharded program; the step is all of them.
    num_devices = setup.mesh.devices.size
    flops_per_step = float(cost.get("flops", float("nan"))) * num_devices
    holder = [state]

    def one_step():
        holder[0], metrics = compiled(holder[0], batch)
        jax.block_until_ready(metrics)

    _log("train_step: timing")
    count, seconds = _timed(one_step, options)
    dtype = settings.model.dtype
    _log(f"train_step: measuring the peak ({dtype} matmul)")
    measured_peak = _peak_flops_per_s(options, dtype, size=4096 if _is_accelerator() else 2048)
    datasheet = DATASHEET_BF16_PEAK.get(jax.devices()[0].device_kind)
    peak = (datasheet or measured_peak) * num_devices  # the mesh's, as the FLOPs are
    achieved = flops_per_step * count / seconds
    results = {
        "images_per_s": count * batch_size / seconds,
        "generator_images_per_s": count * settings.train.generator_images / seconds,
        "steps_per_s": count / seconds,
        "flops_per_image": flops_per_step / batch_size,
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak,
        "peak_source": "datasheet bf16 dense" if datasheet else f"measured {dtype} matmul",
        "measured_peak_flops_per_s": measured_peak,  # one device's
        "mfu": achieved / peak,
        "dtype": dtype,
        "compile_seconds": compile_seconds,
        "global_batch_size": batch_size,
        "image_size": size,
        "num_steps": count,
        "seconds": seconds,
    }
    if options.vs_torch:
        results.update(versus_torch(settings, options, results["steps_per_s"]))
    return results


def versus_torch(settings: Settings, options: Options, jax_steps_per_s: float) -> dict:
    """The PyTorch reference's train step (benchmarks/torch_reference.py), eager and
    compiled, timed as `_timed` times JAX's, and JAX's steps/s over each. Without torch,
    or outside the repository (benchmarks/ is not installed), the reason in one line."""
    from sdn_jax import training_setup

    try:
        reference = importlib.import_module("benchmarks.torch_reference")
    except ImportError as error:
        reason = _no_torch_reason(error)
        _log(f"train_step: no PyTorch comparison: {reason}")
        return {"torch_skipped": reason}
    batch = training_setup.random_batch(settings)
    timings = reference.time_train_step(settings, batch, lambda f: _timed(f, options), _log)
    return {
        "torch": timings,
        "ratio_vs_torch_eager": _ratio(jax_steps_per_s, timings["eager"]),
        "ratio_vs_torch_compile": _ratio(jax_steps_per_s, timings["compile"]),
    }


def _ratio(jax_steps_per_s: float, torch_mode: dict) -> float | None:
    """None where torch has no figure (a failed compile)."""
    rate = torch_mode["steps_per_s"]
    return jax_steps_per_s / rate if rate else None


def _no_torch_reason(error: ImportError) -> str:
    missing = error.name or ""
    if missing == "torch" or missing.startswith("torch."):
        return "torch is not installed (pip install -r requirements-bench.txt)"
    if missing == "benchmarks" or missing.startswith("benchmarks."):
        return (
            "benchmarks/ is not importable: run from the repository root (the PyTorch "
            "reference is not part of the installed package)"
        )
    return f"{type(error).__name__}: {error}"


def _is_accelerator() -> bool:
    return jax.devices()[0].platform != "cpu"


SECTIONS: dict[str, Callable[[Settings, Options], dict]] = {
    "train_step": train_step,
    "input_pipeline": input_pipeline,
    "synth_faces_renderer": synth_faces_renderer,
    "anonymize": anonymize,
}


def run(config, sections: list[str] | tuple[str, ...], options: Options) -> dict:
    """Runs the named sections (all when empty); returns the results as INTERFACES.md has them."""
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        raise ValueError(f"Unknown benchmark sections {unknown}; choose from {list(SECTIONS)}")
    settings = settings_lib.from_config(config)
    device = jax.devices()[0]
    results = {
        "device": getattr(device, "device_kind", None) or device.platform,
        "num_devices": jax.device_count(),
    }
    for name in sections or SECTIONS:
        results[name] = SECTIONS[name](settings, options)
    return results


def format_table(results: dict) -> str:
    """One line per measured value, for people; nested values (train_step's torch.eager)
    get dotted names."""
    rows = [
        (section, key, value)
        for section, values in results.items()
        if isinstance(values, dict)
        for key, value in _flat(values)
    ]
    width = max([20] + [len(key) for _, key, _ in rows])
    lines = [f"device: {results['device']} x{results['num_devices']}"]
    for section, key, value in rows:
        if isinstance(value, float):
            shown = f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
        else:
            shown = str(value)
        lines.append(f"{section:<16} {key:<{width}} {shown:>14}")
    return "\n".join(lines)


def _flat(values: dict, prefix: str = ""):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _data_dir(config) -> str:
    if _DATA_DIR.value:
        return _DATA_DIR.value
    if config.data.data_dir:
        return config.data.data_dir
    # Without $TFDS_DATA_DIR this is runs/tensorflow_datasets: the data of `--workdir runs/*`.
    return sdn_jax.data.default_data_dir(os.path.join("runs", "benchmark"))


def main(argv: list[str]) -> None:
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/default.py")
    options = Options(
        data_dir=_data_dir(config),
        num_batches=_NUM_BATCHES.value,
        seconds=_SECONDS.value,
        warmup_batches=_WARMUP_BATCHES.value,
        workdir=_WORKDIR.value,
        vs_torch=_VS_TORCH.value,
    )
    unknown = [name for name in argv[1:] if name not in SECTIONS]
    if unknown:
        raise app.UsageError(f"Unknown sections {unknown}; choose from {list(SECTIONS)}")
    if options.vs_torch and argv[1:] and "train_step" not in argv[1:]:
        raise app.UsageError("--vs-torch compares the train step: add the train_step section")
    try:
        results = run(config, argv[1:], options)
    except (settings_lib.SettingsError, inference.LoadError) as error:
        raise app.UsageError(str(error)) from None
    print(format_table(results))
    if _OUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=2)
        _log(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
