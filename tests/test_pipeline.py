"""The grain pipelines on an in-memory source whose records say who they are."""

import functools
import itertools

import numpy as np
import pytest
from tiny_model import tiny_settings

from sdn_jax.data import pipeline

SIZE = 4
NUM_RECORDS = 24


def _record(index: int) -> dict:
    """Channel 0 holds the index, channel 1 the column (so a mirror shows), channel 2 is
    0 or 255 (the ends of the scale); identity = index; attributes = the index's bits."""
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[..., 0] = index
    image[..., 1] = np.arange(SIZE) * 10
    image[..., 2] = 255 * (index % 2)
    return {
        "image": image,
        "identity": np.int32(index),
        "attributes": (index >> np.arange(40)) % 2 == 1,
        # CelebA-style extras that the pipeline must drop.
        "file_name": f"{index:06d}.jpg".encode(),
        "landmarks": np.zeros(10, np.int64),
    }


SOURCE = [_record(i) for i in range(NUM_RECORDS)]


def _train(**kwargs):
    kwargs = {"global_batch_size": 4, "seed": 0, "process_index": 0, "process_count": 1} | kwargs
    return pipeline.train_iterator(SOURCE, **kwargs)


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def _ids(batches):
    return np.concatenate([b["identity"] for b in batches]).tolist()


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batch_layout_and_exact_scaling():
    batch = next(_train(global_batch_size=8))
    assert set(batch) == {"image", "identity", "attributes"}
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, SIZE, SIZE, 3)
    assert batch["identity"].dtype == np.int32 and batch["identity"].shape == (8,)
    assert batch["attributes"].dtype == np.bool_ and batch["attributes"].shape == (8, 40)
    for image, index, attributes in zip(
        batch["image"], batch["identity"], batch["attributes"], strict=True
    ):
        original = SOURCE[index]
        np.testing.assert_array_equal(attributes, original["attributes"])
        assert np.all(image[..., 0] == np.float32(index) / np.float32(127.5) - 1)
        assert np.all(image[..., 2] == (1.0 if index % 2 else -1.0))  # 255 -> 1, 0 -> -1.


def test_train_is_deterministic_in_the_seed():
    _assert_same_batches(_take(_train(), 12), _take(_train(), 12))
    assert _ids(_take(_train(), 6)) != _ids(_take(_train(seed=1), 6))


def test_every_epoch_is_a_new_permutation():
    ids = _ids(_take(_train(), 3 * NUM_RECORDS // 4))
    epochs = [ids[i : i + NUM_RECORDS] for i in range(0, len(ids), NUM_RECORDS)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(NUM_RECORDS))
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != list(range(NUM_RECORDS))


def test_flips_are_horizontal_and_about_half():
    batches = _take(_train(global_batch_size=8), 3 * NUM_RECORDS // 8)
    flipped = 0
    for batch in batches:
        for image, index in zip(batch["image"], batch["identity"], strict=True):
            original = SOURCE[index]["image"].astype(np.float32) / np.float32(127.5) - 1
            if np.array_equal(image, original[:, ::-1]):
                flipped += 1
            else:
                np.testing.assert_array_equal(image, original)
    assert 0.3 < flipped / (3 * NUM_RECORDS) < 0.7
    unflipped = _take(_train(global_batch_size=8, random_flip=False), 3)
    for batch in unflipped:
        assert np.all(np.diff(batch["image"][..., 1], axis=-1) > 0)  # Columns in order.


def test_processes_share_each_epoch_disjointly():
    shares = []
    for index in range(2):
        share = _ids(_take(_train(process_index=index, process_count=2), 2 * NUM_RECORDS // 4))
        shares.append([share[: NUM_RECORDS // 2], share[NUM_RECORDS // 2 :]])
    for epoch in range(2):
        first, second = shares[0][epoch], shares[1][epoch]
        assert not set(first) & set(second)
        assert sorted(first + second) == list(range(NUM_RECORDS))
    # Process 0's rows, then process 1's, are the one-process global batch, in its order.
    single = _take(_train(global_batch_size=4), 3)
    pair = [_take(_train(process_index=i, process_count=2), 3) for i in range(2)]
    for step in range(3):
        rows = {key: np.concatenate([pair[0][step][key], pair[1][step][key]]) for key in single[0]}
        _assert_same_batches([single[step]], [rows])


def test_a_position_carries_over_to_another_number_of_processes():
    """A checkpoint of a 2-process job resumes in 1 process (and back): the state counts
    global batches, the same number in every process."""
    pair = [_train(process_index=i, process_count=2) for i in range(2)]
    for iterator in pair:
        _take(iterator, 5)
    single = _train()
    single.set_state(pair[1].get_state())
    expected = _take(_train(), 8)[5:]
    _assert_same_batches(_take(single, 3), expected)
    second = _train(process_index=1, process_count=2)
    second.set_state(single.get_state())
    _assert_same_batches(_take(second, 1), [{k: v[2:] for k, v in _take(_train(), 9)[8].items()}])


def test_restored_iterator_continues_exactly():
    original = _train()
    _take(original, 7)  # Into the second epoch.
    state = original.get_state()
    expected = _take(original, 10)
    restored = _train()
    restored.set_state(state)
    _assert_same_batches(_take(restored, 10), expected)


@pytest.mark.parametrize("process_count", [1, 3])
@pytest.mark.parametrize("num_records", [NUM_RECORDS, 7])
def test_eval_covers_every_record_once(process_count, num_records):
    source = SOURCE[:num_records]
    global_batch_size = 3 * process_count
    seen = []
    counts = []
    for index in range(process_count):
        batches = list(
            pipeline.eval_iterator(
                source,
                global_batch_size=global_batch_size,
                process_index=index,
                process_count=process_count,
            )
        )
        counts.append(len(batches))
        for batch in batches:
            assert batch["mask"].dtype == np.bool_ and batch["mask"].shape == (3,)
            assert batch["image"].shape == (3, SIZE, SIZE, 3)
            seen += batch["identity"][batch["mask"]].tolist()
            columns = batch["image"][batch["mask"]][..., 1]
            assert np.all(np.diff(columns, axis=-1) > 0)  # Never flipped.
    assert sorted(seen) == list(range(num_records))
    expected = pipeline.num_eval_batches(num_records, global_batch_size)
    assert counts == [expected] * process_count


def test_eval_pads_a_process_without_records_with_masked_batches():
    batches = list(
        pipeline.eval_iterator(SOURCE[:2], global_batch_size=6, process_index=2, process_count=3)
    )
    assert len(batches) == 1 and not batches[0]["mask"].any()
    assert np.all(batches[0]["image"] == -1) and np.all(batches[0]["identity"] == 0)


def test_eval_order_is_the_source_order():
    batches = list(pipeline.eval_iterator(SOURCE, global_batch_size=5, process_count=1))
    assert _ids(batches)[:NUM_RECORDS] == list(range(NUM_RECORDS))


@pytest.mark.parametrize(
    "make", [functools.partial(pipeline.train_iterator, seed=0), pipeline.eval_iterator]
)
def test_bad_batch_sizes_and_empty_sources_are_clear_errors(make):
    with pytest.raises(ValueError, match="multiple of the number of JAX processes"):
        make(SOURCE, global_batch_size=6, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="empty"):
        make([], global_batch_size=4, process_index=0, process_count=4)


def test_train_batch_larger_than_share_is_an_error():
    with pytest.raises(ValueError, match="larger than each process's share"):
        _train(global_batch_size=2 * NUM_RECORDS, process_count=2)


def test_worker_processes_give_the_same_batches_and_restore():
    expected = _take(_train(), 8)
    with_workers = _train(worker_count=1)
    try:
        _assert_same_batches(_take(with_workers, 5), expected[:5])
        state = with_workers.get_state()  # A different layout from the no-worker state.
    finally:
        with_workers.close()
    restored = _train(worker_count=1)
    try:
        restored.set_state(state)
        _assert_same_batches(_take(restored, 3), expected[5:])
    finally:
        restored.close()


def test_from_settings_reads_the_settings():
    settings = tiny_settings(
        **{"train.global_batch_size": 4, "data.random_flip": False,
           "data.photos_per_person_in_batch": 1}
    )  # fmt: skip
    batch = next(
        pipeline.from_settings(settings, SOURCE, train=True, process_count=1, process_index=0)
    )
    assert batch["image"].shape[0] == 4
    assert np.all(np.diff(batch["image"][..., 1], axis=-1) > 0)
    batches = list(pipeline.from_settings(settings, SOURCE, train=False))
    assert len(batches) == NUM_RECORDS // 4 and all(b["mask"].all() for b in batches)
    # Grouped batches: the identities are read from the source itself.
    grouped_settings = tiny_settings(
        **{"train.global_batch_size": 4, "data.random_flip": False,
           "data.photos_per_person_in_batch": 2}
    )  # fmt: skip
    people_source = [dict(r, identity=np.int32(PEOPLE[i])) for i, r in enumerate(SOURCE[:23])]
    grouped = pipeline.from_settings(
        grouped_settings, people_source, train=True, process_count=1, process_index=0
    )
    for batch in itertools.islice(grouped, 5):
        runs = batch["identity"].reshape(-1, 2)
        assert (runs[:, 0] == runs[:, 1]).all()
        assert (PEOPLE[_record_index(batch)] == batch["identity"]).all()


def test_in_memory_source_serves_the_decoded_records():
    people_source = [dict(r, identity=np.int32(PEOPLE[i])) for i, r in enumerate(SOURCE[:23])]
    memory = pipeline.InMemorySource(people_source)
    assert len(memory) == 23
    assert pipeline.InMemorySource.decoded_bytes(people_source) == 23 * (SIZE * SIZE * 3 + 4 + 40)
    np.testing.assert_array_equal(memory.identities, PEOPLE[:23])
    for index in (0, 7, 22):
        record = memory[index]
        assert set(record) == set(pipeline.FEATURES)  # the extras are not kept
        for name in pipeline.FEATURES:
            np.testing.assert_array_equal(record[name], people_source[index][name])
            assert record[name].dtype == np.asarray(people_source[index][name]).dtype


@pytest.mark.parametrize("limit_mb, in_memory", [(0.0, False), (1.0, True)])
def test_from_settings_batches_are_the_same_from_memory(limit_mb, in_memory, monkeypatch):
    def settings(in_memory_mb):
        return tiny_settings(
            **{"train.global_batch_size": 4, "data.photos_per_person_in_batch": 2,
               "data.in_memory_mb": in_memory_mb}
        )  # fmt: skip

    people_source = [dict(r, identity=np.int32(PEOPLE[i])) for i, r in enumerate(SOURCE[:23])]
    make = lambda s: pipeline.from_settings(  # noqa: E731
        s, people_source, train=True, process_count=1, process_index=0
    )
    reference = _take(make(settings(0.0)), 15)  # beyond an epoch (23 records, 11 runs of 2)
    built = []
    original = pipeline.InMemorySource.__init__

    def spy(self, source):
        built.append(source)
        original(self, source)

    monkeypatch.setattr(pipeline.InMemorySource, "__init__", spy)
    _assert_same_batches(_take(make(settings(limit_mb)), 15), reference)
    assert bool(built) == in_memory
    built.clear()  # smaller than the decoded split: read as before
    _assert_same_batches(_take(make(settings(0.001)), 15), reference)
    assert not built


# Person-grouped batches: 6 people with 5, 4, 4, 4, 4, 3 photos (record -> person below).
PEOPLE = np.array([0] * 5 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 3)


def _record_index(batch) -> list[int]:
    """Which records a batch holds (channel 0 of the image is the index)."""
    return np.round((batch["image"][:, 0, 0, 0] + 1) * 127.5).astype(int).tolist()


def test_person_grouped_stream_runs_of_one_person_covering_each_epoch():
    stream = pipeline.PersonGroupedStream(SOURCE[: len(PEOPLE)], PEOPLE, 2, seed=3)
    # Runs of 2: person 0 gives 2 (one photo waits), 1-4 give 2 each, person 5 gives 1.
    assert stream.epoch_length == 2 * (2 + 2 * 4 + 1)
    epochs = []
    for epoch in range(3):
        start = epoch * stream.epoch_length
        records = [int(stream[start + i]["identity"]) for i in range(stream.epoch_length)]
        assert len(set(records)) == len(records)  # no record twice in an epoch
        runs = np.asarray(records).reshape(-1, 2)
        assert (PEOPLE[runs[:, 0]] == PEOPLE[runs[:, 1]]).all()
        assert sorted(np.bincount(PEOPLE[runs[:, 0]]).tolist()) == [1, 2, 2, 2, 2, 2]
        epochs.append(records)
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh order every epoch
    again = pipeline.PersonGroupedStream(SOURCE[: len(PEOPLE)], PEOPLE, 2, seed=3)
    assert [int(again[i]["identity"]) for i in range(30)] == [r for e in epochs for r in e][:30]


def test_person_grouped_batches_split_over_processes_and_resume():
    kwargs = dict(identities=PEOPLE, photos_per_person=2, global_batch_size=4)
    source = SOURCE[: len(PEOPLE)]
    single = _take(
        pipeline.train_iterator(source, seed=0, process_index=0, process_count=1, **kwargs), 6
    )
    for batch in single:
        people = PEOPLE[_record_index(batch)].reshape(-1, 2)
        assert (people[:, 0] == people[:, 1]).all()
    halves = [
        _take(
            pipeline.train_iterator(source, seed=0, process_index=p, process_count=2, **kwargs), 6
        )
        for p in range(2)
    ]
    for step, batch in enumerate(single):
        rows = np.concatenate([_record_index(halves[p][step]) for p in range(2)])
        assert rows.tolist() == _record_index(batch)
    iterator = pipeline.train_iterator(source, seed=0, process_index=0, process_count=1, **kwargs)
    _take(iterator, 2)
    state = iterator.get_state()
    rest = _take(iterator, 4)
    resumed = pipeline.train_iterator(source, seed=0, process_index=0, process_count=1, **kwargs)
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 4), rest)


def test_person_grouped_batches_reject_bad_settings():
    source = SOURCE[: len(PEOPLE)]
    with pytest.raises(ValueError, match="multiple of photos_per_person"):
        pipeline.train_iterator(
            source, seed=0, global_batch_size=4, identities=PEOPLE, photos_per_person=3
        )
    with pytest.raises(ValueError, match="needs the records' identities"):
        pipeline.train_iterator(source, seed=0, global_batch_size=4, photos_per_person=2)
    with pytest.raises(ValueError, match="No person has 6 records"):
        pipeline.PersonGroupedStream(source, PEOPLE, 6, seed=0)
