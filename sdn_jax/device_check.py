"""The accelerator check: celeba128's train step at batch 32 and 128, float32 and bfloat16.

    python -m sdn_jax.device_check --out device_check.json   (launch/device_check.sh)

One process, the four settings in turn, each through the benchmark's train step (random
images: a step's cost does not depend on the pixels): compile, time for `--seconds`, and
XLA's FLOP count. Writes {"device", "jax", "runs": [{"global_batch_size", "dtype",
"steps_per_s", "images_per_s", "mfu", ...}]}, so docs/scaling.md's predictions can be
replaced by measurements.
"""

import argparse
import json
import sys
import time

import jax

from sdn_jax import benchmark
from sdn_jax import settings as settings_lib
from sdn_jax.scaling_model import load_config

SETTINGS = [(batch, dtype) for batch in (32, 128) for dtype in ("float32", "bfloat16")]


def check(config_path: str, seconds: float) -> dict:
    options = benchmark.Options(data_dir="", seconds=seconds, warmup_batches=3)
    runs = []
    for batch, dtype in SETTINGS:
        config = load_config(config_path)
        with config.unlocked():
            config.train.global_batch_size = batch
            config.model.dtype = dtype
        started = time.perf_counter()
        result = benchmark.train_step(settings_lib.from_config(config), options)
        result["wall_seconds"] = time.perf_counter() - started
        runs.append(result)
        print(f"batch {batch:4d} {dtype:9s} {result['steps_per_s']:8.2f} steps/s "
              f"{result['images_per_s']:9.1f} images/s  MFU {result['mfu']:.1%}",
              file=sys.stderr, flush=True)  # fmt: skip
    device = jax.devices()[0]
    return {"device": device.device_kind, "platform": device.platform,
            "num_devices": jax.device_count(), "jax": jax.__version__, "runs": runs}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/celeba128.py")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed per setting")
    args = parser.parse_args(argv)
    results = check(args.config, args.seconds)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
