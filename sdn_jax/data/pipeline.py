"""grain input pipelines: records of a data source -> per-process numpy batches.

Both pipelines read one *global* stream of records and give process `p` of `P` the
positions `p, p + P, p + 2P, ...` of it (grain's `ds[p::P]`). So the global batch at
step t (process 0's rows, then process 1's, ...) holds the same records whatever the
number of processes, each process gets a disjoint share of every epoch, and all of
them step in lockstep. Everything random (the epoch order, the flips) is a pure
function of the seed and the position in that stream, which is what makes a grain
iterator's state (`get_state()`, a few bytes) enough to resume exactly.

Batches are dicts of numpy arrays:
  image       float32 (B, H, W, 3) in [-1, 1] (uint8 0 -> -1, 255 -> 1 exactly)
  identity    int32 (B,)
  attributes  bool (B, 40)
  mask        bool (B,), eval only: False on padding rows
where B = global_batch_size // process_count.
"""

import math
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np

# The records' extra keys (CelebA's `identity_raw`, `landmarks`, `file_name`) are dropped:
# the models never use them and byte strings would not stack into a numeric batch.
FEATURES = ("image", "identity", "attributes")

# Background threads that read, decode and batch in each process, so that decoding overlaps
# the training step. More threads did not help on 2 cores (decoding small PNGs is mostly
# Python, under the GIL). The buffer counts batches: grain's default (500) would hold
# gigabytes of float32 images at large batch sizes.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


# Transforms are module-level classes so that grain worker processes can unpickle them.
class _SelectFeatures(grain.transforms.Map):
    """Keeps the model's features, with fixed dtypes, so every source batches alike."""

    def map(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        return {
            "image": np.asarray(record["image"], np.uint8),
            "identity": np.asarray(record["identity"], np.int32),
            "attributes": np.asarray(record["attributes"], np.bool_),
        }


class _RandomHorizontalFlip(grain.transforms.RandomMap):
    """Mirrors the image left-right with probability 1/2.

    grain seeds `rng` from the pipeline seed and the record's position in the global
    stream, so a flip does not depend on threads, workers or the process count, and a
    record gets a fresh coin in every epoch.
    """

    def random_map(self, record: dict[str, np.ndarray], rng: np.random.Generator):
        if rng.random() < 0.5:
            record = dict(record, image=record["image"][:, ::-1])
        return record


class _WithMask(grain.transforms.Map):
    """Marks a real eval record (mask True)."""

    def map(self, record: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(record, mask=np.True_)


class _Padding(grain.transforms.Map):
    """Turns any element into an all-zero record of the template's shapes, masked out."""

    def __init__(self, template: dict[str, np.ndarray]):
        self._record = {k: np.zeros_like(v) for k, v in template.items()}
        self._record["mask"] = np.False_

    def map(self, element: Any) -> dict[str, np.ndarray]:
        del element  # Only the position matters.
        return self._record


class _ScaleImages(grain.transforms.Map):
    """uint8 [0, 255] -> float32 [-1, 1], on the whole batch at once (one numpy op).

    Dividing by 127.5 (exact in float32) maps 0 and 255 to exactly -1 and 1.
    """

    def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = batch["image"].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        return dict(batch, image=image)


def _process_batch_size(
    global_batch_size: int, process_index: int | None, process_count: int | None
) -> tuple[int, int, int]:
    """(process_index, process_count, per-process batch size), defaulting to JAX's."""
    process_index = jax.process_index() if process_index is None else int(process_index)
    process_count = jax.process_count() if process_count is None else int(process_count)
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"Bad process_index {process_index} for process_count {process_count}")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size ({global_batch_size}) must be a positive multiple of the "
            f"number of JAX processes ({process_count}): each process loads an equal share."
        )
    return process_index, process_count, global_batch_size // process_count


def _check_not_empty(source: Sequence) -> int:
    num_records = len(source)
    if num_records == 0:
        raise ValueError("The data source is empty: there is nothing to iterate over.")
    return num_records


def _finish(ds: grain.MapDataset, batch_size: int, worker_count: int) -> grain.IterDataset:
    """Batches, scales and hands the work to threads (and, if asked, worker processes)."""
    ds = ds.batch(batch_size, drop_remainder=True).map(_ScaleImages())
    iter_ds = ds.to_iter_dataset(_READ_OPTIONS)
    if worker_count > 0:
        options = grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2)
        iter_ds = iter_ds.mp_prefetch(options)
    return iter_ds


def train_iterator(
    source: Sequence,
    *,
    global_batch_size: int,
    seed: int,
    random_flip: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
) -> grain.DatasetIterator:
    """An endless iterator of this process's training batches (see the module doc).

    Every epoch is a fresh permutation of the whole source (grain combines the seed with
    the epoch number); batches run across epoch boundaries, so no record is ever dropped.
    The returned iterator has `get_state()` / `set_state(state)`: a new iterator built
    with the same arguments and given a saved state yields what the saved one would
    have yielded next. States of worker and no-worker pipelines are not interchangeable.

    worker_count > 0 decodes in that many grain worker processes (absl flags must be
    parsed, and the program needs a `__main__` guard); 0 decodes in threads here.
    """
    process_index, process_count, batch_size = _process_batch_size(
        global_batch_size, process_index, process_count
    )
    num_records = _check_not_empty(source)
    if batch_size > num_records // process_count:
        raise ValueError(
            f"The per-process batch ({batch_size} = {global_batch_size} / {process_count} "
            f"processes) is larger than each process's share of the {num_records} records "
            f"({num_records // process_count}): batches would repeat records. Use a smaller "
            "global_batch_size or more data."
        )
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat().map(_SelectFeatures())
    if random_flip:
        ds = ds.random_map(_RandomHorizontalFlip())
    ds = ds[process_index::process_count]
    return iter(_finish(ds, batch_size, worker_count))


def num_eval_batches(num_records: int, global_batch_size: int) -> int:
    """Batches every process yields for `num_records` (the last one padded)."""
    return math.ceil(num_records / global_batch_size)


def eval_iterator(
    source: Sequence,
    *,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """A finite, re-iterable dataset of this process's eval batches, in source order.

    Across all processes every record appears exactly once with mask True. The stream
    is padded with masked-out zero records to a whole number of global batches, so every
    process yields `num_eval_batches(len(source), global_batch_size)` batches of the
    full per-process size (fixed shapes: one compiled eval step; lockstep across hosts).
    """
    process_index, process_count, batch_size = _process_batch_size(
        global_batch_size, process_index, process_count
    )
    num_records = _check_not_empty(source)
    records = grain.MapDataset.source(source).map(_SelectFeatures())
    ds = records.map(_WithMask())
    num_padding = num_eval_batches(num_records, global_batch_size) * global_batch_size - num_records
    if num_padding:
        padding = grain.MapDataset.range(num_padding).map(_Padding(records[0]))
        ds = grain.MapDataset.concatenate([ds, padding])
    return _finish(ds[process_index::process_count], batch_size, worker_count=0)


def from_config(
    config,
    source: Sequence,
    *,
    train: bool,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """The train iterator or eval dataset that `config` (seed, data, train) describes."""
    common = dict(
        global_batch_size=config.train.global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    if not train:
        return eval_iterator(source, **common)
    return train_iterator(
        source,
        seed=config.seed,
        random_flip=config.data.random_flip,
        worker_count=config.data.worker_count,
        **common,
    )
