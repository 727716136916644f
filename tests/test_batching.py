"""map_in_batches: fixed-size batches, padding cut off, pytree outputs."""

import numpy as np
import pytest

from sdn_jax.batching import map_in_batches


def _recording(fn):
    """fn, and the list of the batches it was called with."""
    seen = []

    def wrapped(*batch):
        seen.append([b.copy() for b in batch])
        return fn(*batch)

    return wrapped, seen


def test_rows_in_fixed_batches_padding_cut():
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    y = np.arange(5, dtype=np.int32)
    fn, seen = _recording(lambda a, b: a.sum(-1) + b)
    out = map_in_batches(fn, [x, y], 2)
    np.testing.assert_array_equal(out, x.sum(-1) + y)
    assert [batch[0].shape for batch in seen] == [(2, 2)] * 3  # one shape: one compile
    np.testing.assert_array_equal(seen[-1][0], [[8, 9], [0, 0]])  # zeros
    np.testing.assert_array_equal(seen[-1][1], [4, 0])
    assert seen[-1][0].dtype == np.float32 and seen[-1][1].dtype == np.int32


def test_edge_padding_and_pytree_outputs():
    x = np.arange(3, dtype=np.float32)[:, None]
    fn, seen = _recording(lambda a: {"double": 2 * a, "pair": (a, -a)})
    out = map_in_batches(fn, [x], 4, pad="edge")
    np.testing.assert_array_equal(seen[0][0][:, 0], [0, 1, 2, 2])
    np.testing.assert_array_equal(out["double"], 2 * x)
    np.testing.assert_array_equal(out["pair"][1], -x)
    assert isinstance(out["pair"][0], np.ndarray)


def test_empty_input_keeps_output_shapes():
    fn, seen = _recording(lambda a: a[:, :1] * 3)
    out = map_in_batches(fn, [np.zeros((0, 4), np.float32)], 8, pad="edge")
    assert out.shape == (0, 1) and len(seen) == 1 and seen[0][0].shape == (8, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pad"):
        map_in_batches(lambda a: a, [np.zeros(3)], 2, pad="reflect")
    with pytest.raises(ValueError, match="batch_size"):
        map_in_batches(lambda a: a, [np.zeros(3)], 0)
    with pytest.raises(ValueError, match="length"):
        map_in_batches(lambda a, b: a, [np.zeros(3), np.zeros(4)], 2)
