"""Where metrics go: metrics.jsonl (for tools) and TensorBoard event files (for people).

Only process 0 writes. TensorBoard files go to <workdir>/tensorboard (tensorboardX,
which needs no TensorFlow).
"""

import json
import logging
import math
import os

import jax

log = logging.getLogger("sdn_jax")


class MetricWriter:
    """`optional`: a run that cannot be written (`--mode evaluate` on a read-only run)
    writes no metrics, with one warning saying so, instead of failing."""

    def __init__(self, workdir: str, *, optional: bool = False):
        self._active = jax.process_index() == 0
        self._jsonl = None
        self._tensorboard = None
        if self._active:
            from tensorboardX import SummaryWriter

            path = os.path.join(workdir, "metrics.jsonl")
            try:
                self._jsonl = open(path, "a")  # noqa: SIM115
                self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except OSError as error:
                if not optional:
                    raise
                if self._jsonl is not None:
                    self._jsonl.close()
                log.warning("Cannot write %s or tensorboard/ (%s): the figures are only in "
                            "eval/", path, error.strerror)  # fmt: skip
                self._active = False

    def write(self, step: int, split: str, scalars: dict) -> None:
        if not self._active:
            return
        values = {k: float(v) for k, v in scalars.items()}
        record = {"step": int(step), "split": split}
        # JSON has no NaN/Infinity: write them as strings so the line stays parseable.
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tensorboard.add_scalar(f"{split}/{name}", value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tensorboard.close()
