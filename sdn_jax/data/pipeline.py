"""grain input pipelines: records of a data source -> per-process numpy batches.

Both pipelines read one *global* stream of records. The training stream is cut into
chunks of the per-process batch size b = B / P, and process `p` of `P` takes chunks
`p, p + P, p + 2P, ...` (grain's `ds.batch(b)[p::P]`): global batch t is stream positions
t*B .. t*B + B - 1 in order (process 0's rows, then process 1's, ...), the same rows in
the same order whatever the number of processes. So 2 processes train exactly as 1 does,
and an iterator position (a count of batches, the same in every process) can be handed
to a job with another number of processes. Each process gets a disjoint share of every
epoch, and all of them step in lockstep. Everything random (the epoch order, the flips) is a pure
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

from sdn_jax.images import from_uint8

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
        image = from_uint8(batch["image"])
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


def _finish(batches: grain.MapDataset, worker_count: int) -> grain.IterDataset:
    """Scales the batches and hands the work to threads (and, if asked, worker processes)."""
    ds = batches.map(_ScaleImages())
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
    identities: np.ndarray | None = None,
    photos_per_person: int = 1,
) -> grain.DatasetIterator:
    """An endless iterator of this process's training batches (see the module doc).

    photos_per_person > 1 (with every record's `identities`) makes each global batch
    runs of that many photos of one person (PersonGroupedStream) instead of a plain
    shuffle; the global batch size must then be a multiple of it.

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
    if photos_per_person > 1:
        if identities is None:
            raise ValueError("photos_per_person > 1 needs the records' identities")
        if global_batch_size % photos_per_person:
            raise ValueError(
                f"global_batch_size ({global_batch_size}) must be a multiple of "
                f"photos_per_person ({photos_per_person}): a batch holds whole runs."
            )
        stream = PersonGroupedStream(source, identities, photos_per_person, seed)
        ds = grain.MapDataset.source(stream).seed(seed)
    else:
        ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    ds = ds.map(_SelectFeatures())
    if random_flip:
        ds = ds.random_map(_RandomHorizontalFlip())
    # Contiguous shares (module doc); with one process this is the plain batched stream.
    ds = ds.batch(batch_size, drop_remainder=True)[process_index::process_count]
    return iter(_finish(ds, worker_count))


class PersonGroupedStream(Sequence):
    """An endless stream of records in runs of `photos_per_person` photos of one person.

    Metric learning needs positives in the batch: a batch of P x K records holds K
    different photos of each of P people, so the classifier can learn "same person
    despite pose and light" from pairs, which carries over to people it never saw (a
    softmax over 1,000 people seen less than once each learns next to nothing).

    Epoch e: each person's records are shuffled and cut into runs of K (a remainder
    shorter than K waits for the next epoch's shuffle), and the runs are shuffled; all
    of it is a pure function of (seed, e), so position -> record is deterministic and a
    grain iterator's state resumes it exactly.
    """

    def __init__(self, source: Sequence, identities: np.ndarray, photos_per_person: int, seed: int):
        identities = np.asarray(identities)
        if len(identities) != len(source):
            raise ValueError(f"{len(identities)} identities for a source of {len(source)} records")
        order = np.argsort(identities, kind="stable")
        starts = np.flatnonzero(np.diff(identities[order], prepend=-1))
        self._people = [g for g in np.split(order, starts[1:]) if len(g) >= photos_per_person]
        self._runs_per_epoch = sum(len(g) // photos_per_person for g in self._people)
        if not self._runs_per_epoch:
            raise ValueError(
                f"No person has {photos_per_person} records: cannot batch "
                f"{photos_per_person} photos per person (data.photos_per_person_in_batch)."
            )
        self._source, self._k, self._seed = source, photos_per_person, seed
        self.epoch_length = self._runs_per_epoch * photos_per_person
        self._cached_epoch, self._cached_order = -1, None

    def __len__(self) -> int:
        return self.epoch_length * 2**30  # Endless in practice: grain needs a length.

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._cached_epoch:
            rng = np.random.default_rng([self._seed, epoch])
            runs = []
            for group in self._people:
                shuffled = rng.permutation(group)
                usable = len(group) - len(group) % self._k
                runs.append(shuffled[:usable].reshape(-1, self._k))
            runs = np.concatenate(runs)
            self._cached_order = runs[rng.permutation(len(runs))].reshape(-1)
            self._cached_epoch = epoch
        return self._cached_order

    def __getitem__(self, position: int):
        epoch, offset = divmod(int(position), self.epoch_length)
        return self._source[int(self._epoch_order(epoch)[offset])]


class InMemorySource(Sequence):
    """A source's model features decoded once into arrays, then served from memory.

    Decoding a small PNG costs ~0.4 ms of Python per record, on every read: at 64
    images a step that is ~25 ms of the 2 CPU cores' time per step. A small split (24,000
    images at 32 px: 74 MB) is cheaper to decode once. Records are what the source gives
    (restricted to FEATURES), so batches are the same as from the source itself.
    """

    def __init__(self, source: Sequence):
        count = _check_not_empty(source)
        first = source[0]
        self._arrays = {
            name: np.empty((count, *np.shape(first[name])), np.asarray(first[name]).dtype)
            for name in FEATURES
        }
        for index in range(count):
            record = source[index]
            for name, array in self._arrays.items():
                array[index] = record[name]

    @staticmethod
    def decoded_bytes(source: Sequence) -> int:
        """Memory the decoded features of `source` take (from its first record)."""
        first = source[0]
        return len(source) * sum(np.asarray(first[name]).nbytes for name in FEATURES)

    @property
    def identities(self) -> np.ndarray:
        return self._arrays["identity"]

    def __len__(self) -> int:
        return len(self._arrays["image"])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: array[index] for name, array in self._arrays.items()}


def read_identities(source: Sequence) -> np.ndarray:
    """Every record's identity (reads the whole source once: ~10 s for 24k records)."""
    return np.fromiter((source[i]["identity"] for i in range(len(source))), np.int64, len(source))


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
    ds = ds[process_index::process_count].batch(batch_size, drop_remainder=True)
    return _finish(ds, worker_count=0)


def from_settings(
    settings,
    source: Sequence,
    *,
    train: bool,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """The train iterator or eval dataset that `settings` (seed, data, train) describe."""
    common = dict(
        global_batch_size=settings.train.global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    if not train:
        return eval_iterator(source, **common)
    photos_per_person = settings.data.photos_per_person_in_batch
    limit = settings.data.in_memory_mb * 2**20
    if limit and InMemorySource.decoded_bytes(source) <= limit:
        source = InMemorySource(source)
    identities = None
    if photos_per_person > 1:
        identities = getattr(source, "identities", None)
        identities = read_identities(source) if identities is None else identities
    return train_iterator(
        source,
        seed=settings.seed,
        random_flip=settings.data.random_flip,
        worker_count=settings.data.worker_count,
        identities=identities,
        photos_per_person=photos_per_person,
        **common,
    )
