"""A cost model of a config's training step on accelerators: the table of docs/scaling.md.

    python -m sdn_jax.scaling_model --config configs/celeba128.py --update docs/scaling.md

Measured here, on any machine: XLA's FLOP count of the compiled train step (cost analysis)
at two batch sizes (a step's FLOPs are a fixed part plus a part per image), and the bytes
of the parameters and optimiser states (the state's abstract shapes). Predicted from
datasheet figures (HARDWARE, with their sources): the step time on N chips with
data parallelism, compute at an assumed share of the bf16 peak (MFU) plus a ring
all-reduce of the float32 gradients over the interconnect, not overlapped (an upper
bound on the step time; XLA overlaps part of it). The prediction is only as good as the
assumed MFU: launch/device_check.sh measures it.
"""

import argparse
import dataclasses
import importlib.util
import re
import sys

import jax
import numpy as np

from sdn_jax import settings as settings_lib
from sdn_jax import training_setup

BATCHES = (32, 128, 512, 1024, 4096)
EPOCH_IMAGES = 162_770  # CelebA's train split
EPOCHS = 30  # the paper-scale schedule (configs/celeba128.py: 150,000 steps at 32)
# Assumed model FLOPs utilisation of the bf16 peak: convolutions of 32..512 channels at
# 8..128 px keep the matrix units partly idle; 35% is typical of such conv nets on TPUs
# and H100s. Replace it with launch/device_check.sh's measured `mfu`.
ASSUMED_MFU = 0.35


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    chips: int
    bf16_flops: float  # dense peak per chip
    allreduce_bytes_per_s: float  # per chip, one direction, over the slowest link of the ring
    dollars_per_chip_hour: float
    source: str


HARDWARE = (
    Hardware("TPU v5e-16", 16, 197e12, 200e9, 1.20,
             "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 400 GB/s bidirectional ICI "
             "per chip; cloud.google.com/tpu/pricing: $1.20 per chip-hour on demand"),
    Hardware("TPU v5p-32 (16 chips)", 16, 459e12, 600e9, 4.20,
             "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 1200 GB/s bidirectional ICI "
             "per chip; cloud.google.com/tpu/pricing: $4.20 per chip-hour on demand"),
    Hardware("H100 SXM x8 (1 node)", 8, 989e12, 450e9, 0.0,
             "NVIDIA H100 datasheet (SXM5): 989 TFLOP/s dense bf16, NVLink 900 GB/s "
             "bidirectional per GPU; price: none stated (varies by provider)"),
    Hardware("H100 SXM x32 (4 nodes)", 32, 989e12, 50e9, 0.0,
             "as above; between nodes 400 Gb/s InfiniBand NDR per GPU (50 GB/s), the ring's "
             "slowest link"),
)  # fmt: skip


def _settings(config, batch: int):
    with config.unlocked():
        config.train.global_batch_size = batch
        config.train.generator_batch_size = None
        config.mesh.data, config.mesh.fsdp = -1, 1
    return settings_lib.from_config(config)


def step_flops(config, batch: int) -> float:
    """XLA's FLOP count of the compiled full train step at `batch` (one device)."""
    setup = training_setup.build(_settings(config, batch), _one_device_mesh())
    abstract_batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=setup.batch_sharding),
        training_setup.random_batch(setup.settings),
    )
    # LLVM's optimisations do not change the HLO's FLOPs; off, the compile is ~5x faster.
    step = setup.train_step(compiler_options={"xla_backend_optimization_level": 0})
    cost = step.lower(setup.abstract_state, abstract_batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def _one_device_mesh():
    from sdn_jax import sharding

    return sharding.make_mesh(settings_lib.Mesh(data=1, fsdp=1), jax.devices()[:1])


def state_bytes(config) -> dict:
    """Bytes of the parameters and of the optimiser states (and moving averages)."""
    setup = training_setup.build(_settings(config, 32), _one_device_mesh())
    size = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize  # noqa: E731
                            for x in jax.tree.leaves(tree))  # fmt: skip
    state = setup.abstract_state
    return {"params": size(state.params), "optimizer": size(state.opt_state),
            "ema": size(state.ema_params)}  # fmt: skip


def measure(config) -> dict:
    """FLOPs per step as fixed + per image (from batches 8 and 16), and the state's bytes."""
    small, large = 8, 16
    flops_small, flops_large = step_flops(config, small), step_flops(config, large)
    per_image = (flops_large - flops_small) / (large - small)
    return {"flops_fixed": flops_small - per_image * small, "flops_per_image": per_image,
            **state_bytes(config)}  # fmt: skip


def predict(measured: dict, hardware: Hardware, batch: int, mfu: float = ASSUMED_MFU):
    """Step time (s), images/s, scaling efficiency and the cost of EPOCHS epochs; None when
    the batch does not give every chip an image."""
    if batch % hardware.chips:
        return None
    flops = measured["flops_fixed"] + measured["flops_per_image"] * batch
    compute = flops / hardware.chips / (hardware.bf16_flops * mfu)
    n = hardware.chips
    # A ring all-reduce sends and receives 2 (n - 1) / n of the gradient bytes per chip.
    communicate = 2 * (n - 1) / n * measured["params"] / hardware.allreduce_bytes_per_s
    step = compute + communicate
    steps = EPOCHS * EPOCH_IMAGES / batch
    hours = steps * step / 3600
    return {"flops": flops, "compute_s": compute, "allreduce_s": communicate, "step_s": step,
            "images_per_s": batch / step, "efficiency": compute / step, "hours": hours,
            "dollars": hours * n * hardware.dollars_per_chip_hour}  # fmt: skip


def table(measured: dict) -> str:
    """The markdown of docs/scaling.md's generated section."""
    gib = 2**30
    lines = [
        f"Measured (XLA cost analysis, one device): a full step costs "
        f"{measured['flops_fixed'] / 1e9:.1f} GFLOP + {measured['flops_per_image'] / 1e9:.1f} "
        f"GFLOP per image. Parameters {measured['params'] / gib:.3f} GiB (float32), optimiser "
        f"states {measured['optimizer'] / gib:.3f} GiB, moving averages "
        f"{measured['ema'] / gib:.3f} GiB; bytes all-reduced per step (float32 gradients, "
        f"whatever the batch): {measured['params'] / gib:.3f} GiB.",
        "",
        f"Predicted at an assumed MFU of {ASSUMED_MFU:.0%} of the bf16 peak, all-reduce not "
        f"overlapped; {EPOCHS} epochs of {EPOCH_IMAGES:,} images. Below ~8 images per chip a "
        "step is latency-bound and the MFU assumption is optimistic; above ~2,500 images/s "
        "per host the input pipeline must keep up (`python -m sdn_jax.benchmark "
        "input_pipeline`; raise `data.worker_count`).",
        "",
        "| hardware | global batch | TFLOP/step | compute ms | all-reduce ms | step ms | "
        "images/s | scaling efficiency | 30 epochs (min) | cost ($) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for hardware in HARDWARE:
        for batch in BATCHES:
            p = predict(measured, hardware, batch)
            if p is None:
                continue
            cost = f"{p['dollars']:,.1f}" if hardware.dollars_per_chip_hour else "-"
            lines.append(
                f"| {hardware.name} | {batch} | {p['flops'] / 1e12:.2f} | "
                f"{p['compute_s'] * 1e3:.1f} | {p['allreduce_s'] * 1e3:.2f} | "
                f"{p['step_s'] * 1e3:.1f} | {p['images_per_s']:,.0f} | {p['efficiency']:.0%} | "
                f"{p['hours'] * 60:.0f} | {cost} |"
            )
    lines += ["", "Sources of the hardware figures:", ""]
    lines += [f"- {h.name}: {h.source}" for h in HARDWARE]
    return "\n".join(lines)


BEGIN = "<!-- generated by python -m sdn_jax.scaling_model: begin -->"
END = "<!-- generated by python -m sdn_jax.scaling_model: end -->"


def update(path: str, generated: str) -> None:
    """Replaces the text between BEGIN and END in `path`."""
    with open(path) as f:
        text = f.read()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: {path} has no generated section ({BEGIN} ... {END})")
    with open(path, "w") as f:
        f.write(pattern.sub(lambda _: f"{BEGIN}\n{generated}\n{END}", text))


def load_config(path: str):
    """get_config() of a config file (as `--config` loads it)."""
    spec = importlib.util.spec_from_file_location("scaling_config", path)
    if spec is None:
        raise SystemExit(f"error: no config file at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/celeba128.py")
    parser.add_argument("--update", help="a markdown file whose generated section to rewrite")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    generated = table(measure(config))
    print(generated)
    if args.update:
        update(args.update, generated)
        print(f"updated {args.update}", file=sys.stderr)


if __name__ == "__main__":
    main()
