"""Any number of rows through a jitted function in batches of one fixed size.

A jitted function compiles once per input shape. Running it on batches of `batch_size`
rows, the last one padded, keeps it to one compile whatever the number of rows; the
padding rows' outputs are cut off.
"""

from collections.abc import Callable, Sequence

import jax
import numpy as np

PAD_MODES = ("zeros", "edge")


def _padded(rows: np.ndarray, size: int, mode: str) -> np.ndarray:
    """`rows` with rows appended up to `size`: zeros, or copies of the last row ("edge")."""
    widths = [(0, size - len(rows))] + [(0, 0)] * (rows.ndim - 1)
    if mode == "edge" and len(rows):
        return np.pad(rows, widths, mode="edge")
    return np.pad(rows, widths)


def map_in_batches(fn: Callable, arrays: Sequence, batch_size: int, *, pad: str = "zeros"):
    """fn(*batch) over the rows of `arrays` (all of one length N), `batch_size` at a time.

    Each batch holds the same rows of every array; the last is padded to `batch_size`
    rows with `pad` ("zeros", or "edge": copies of its last row), so fn always sees one
    shape. fn returns an array or a pytree of arrays (a dict, a tuple) with one row per
    input row; the real rows come back as numpy, concatenated to N rows. An empty input
    runs one batch of zeros, so that the outputs still have their shapes.
    """
    if pad not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    arrays = [np.asarray(a) for a in arrays]
    count = len(arrays[0])
    if any(len(a) != count for a in arrays):
        raise ValueError(f"arrays differ in length: {[len(a) for a in arrays]}")
    outputs = []
    for start in range(0, max(count, 1), batch_size):
        batch = [a[start : start + batch_size] for a in arrays]
        rows = len(batch[0])
        if rows < batch_size:
            batch = [_padded(b, batch_size, pad) for b in batch]
        outputs.append(jax.tree.map(lambda x, rows=rows: np.asarray(x)[:rows], fn(*batch)))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)
