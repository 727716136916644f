"""Checkpointer: round trips, fallback past broken steps, retention, resuming a grain stream."""

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sdn_jax import checkpointing
from sdn_jax.checkpointing import Checkpointer, NoValidCheckpointError
from sdn_jax.data import pipeline

ROOT = Path(__file__).resolve().parents[1]


def _state(seed: int) -> dict:
    """A state like training's: params, a real adam state after one update, an int step."""
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
    }
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    updates, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    return {
        "params": optax.apply_updates(params, updates),
        "opt": opt_state,
        "step": jnp.int32(seed),
    }


def _abstract(state) -> dict:
    """The restore target: shapes and dtypes from `jax.eval_shape`, plus shardings."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(lambda: state)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _assert_same(restored, expected):
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.asarray(a).dtype == np.asarray(b).dtype


ABSTRACT = _abstract(_state(0))


def _save_steps(directory, steps, **kwargs) -> None:
    with Checkpointer(directory, **kwargs) as ckpt:
        for step in steps:
            assert ckpt.save(step, _state(step), {"position": step})


def test_round_trip_keeps_values_types_and_data_state(tmp_path):
    state = _state(7)
    data_state = {"next_index": 12, "parents": [{"seed": 3}], "name": "train"}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(7, state, data_state)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [7] and ckpt.latest_step() == 7
        restored = ckpt.restore_latest(ABSTRACT)
    assert restored.step == 7
    assert restored.data_state == data_state
    _assert_same(restored.state, state)
    # Namedtuples, not the lists Orbax gives back without a target.
    assert isinstance(restored.state["opt"][0], optax.ScaleByAdamState)
    assert isinstance(restored.state["opt"][1], optax.EmptyState)
    assert restored.state["params"]["w"].sharding == ABSTRACT["params"]["w"].sharding
    # grain's per-process file layout, so that every JAX process keeps its own position.
    data_file = tmp_path / "7" / "data" / "process_0-of-1.json"
    assert json.loads(data_file.read_text()) == data_state


def test_without_data_state(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, _state(3))
        restored = ckpt.restore_latest(ABSTRACT)
    assert restored.step == 3 and restored.data_state is None
    _assert_same(restored.state, _state(3))


def test_no_checkpoint_gives_none_and_creates_the_folder(tmp_path):
    directory = tmp_path / "new" / "run"
    with Checkpointer(directory) as ckpt:
        assert ckpt.restore_latest(ABSTRACT) is None
        assert ckpt.latest_step() is None and ckpt.all_steps() == []
    assert directory.is_dir()


def test_restores_the_newest_and_honours_max_to_keep(tmp_path):
    _save_steps(tmp_path, [10, 20, 30, 40], max_to_keep=2)
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.all_steps() == [30, 40]
        restored = ckpt.restore_latest(ABSTRACT)
    assert restored.step == 40 and restored.data_state == {"position": 40}
    _assert_same(restored.state, _state(40))


def test_never_overwrites_a_step_or_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "logs").mkdir()
    _save_steps(tmp_path, [1, 2, 3], max_to_keep=1)
    with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        assert not ckpt.save(3, _state(99), {"position": 99})
        assert not ckpt.save(2, _state(99))  # Older than the newest: skipped, as Orbax does.
        restored = ckpt.restore_latest(ABSTRACT)
    assert restored.data_state == {"position": 3}
    _assert_same(restored.state, _state(3))
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "logs").is_dir()


def _garble(path: Path) -> None:
    path.write_bytes(b"not a checkpoint" * 8)


def _garble_arrays(step_dir: Path) -> None:
    for path in (step_dir / "state" / "d").iterdir():  # The arrays' data (merged OCDBT).
        _garble(path)


def _truncate_manifest(step_dir: Path) -> None:
    manifest = step_dir / "state" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])


def _empty(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


CORRUPTIONS = {
    "array data garbled": _garble_arrays,
    "manifest truncated": _truncate_manifest,
    "tree metadata garbled": lambda d: _garble(d / "state" / "_METADATA"),
    "data state garbled": lambda d: _garble(d / "data" / "process_0-of-1.json"),
    "empty step folder": _empty,
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_falls_back_past_a_broken_newest_step(tmp_path, caplog, corrupt):
    _save_steps(tmp_path, [1, 2])
    corrupt(tmp_path / "2")
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2  # Orbax alone would pick it and fail.
        with caplog.at_level(logging.WARNING):
            restored = ckpt.restore_latest(ABSTRACT)
        assert restored.step == 1 and restored.data_state == {"position": 1}
        _assert_same(restored.state, _state(1))
        assert any("step 2" in r.getMessage() for r in caplog.records)
        # The broken step is set aside, not deleted, so it no longer blocks saving step 2.
        assert ckpt.all_steps() == [1]
        assert (tmp_path / "2.invalid").is_dir()
        assert ckpt.save(2, _state(2), {"position": 2})
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore_latest(ABSTRACT).data_state == {"position": 2}


def test_all_broken_raises_and_renames_nothing(tmp_path, caplog):
    _save_steps(tmp_path, [1, 2])
    _garble_arrays(tmp_path / "1")
    _empty(tmp_path / "2")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(NoValidCheckpointError, match=r"steps 2, 1"):
            ckpt.restore_latest(ABSTRACT)
        assert ckpt.all_steps() == [1, 2]
    assert not list(tmp_path.glob("*" + checkpointing.INVALID_SUFFIX + "*"))


def test_a_changed_state_structure_is_not_taken_for_corruption(tmp_path):
    _save_steps(tmp_path, [1])
    other = {"params": {"w": jnp.zeros((5, 3))}, "step": 0}
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(NoValidCheckpointError, match="state structure"):
            ckpt.restore_latest(_abstract(other))
        assert ckpt.all_steps() == [1]


def test_only_the_failed_restore_noise_is_dropped(monkeypatch, caplog):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpointing.silence_failed_restore_noise()
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError) as closed:  # What tensorstore's late callbacks hit.
        loop.call_soon_threadsafe(print)
    elsewhere = RuntimeError("Event loop is closed")
    for error in (closed.value, elsewhere):
        sys.unraisablehook(SimpleNamespace(exc_value=error, exc_traceback=error.__traceback__))
    assert [u.exc_value for u in seen] == [elsewhere]

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for message in ("DATA_LOSS: ... [tensorstore_spec='{}']", "something else"):
            error = ValueError(message)
            logging.getLogger("asyncio").error(
                "Future exception was never retrieved", exc_info=error
            )
    assert [r.exc_info[1].args[0] for r in caplog.records] == ["something else"]


def _record(index: int) -> dict:
    rng = np.random.default_rng(index)
    return {
        "image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        "identity": index % 5,
        "attributes": rng.random(40) < 0.5,
    }


def test_resumes_a_grain_stream_exactly(tmp_path):
    source = [_record(i) for i in range(20)]

    def make():
        return pipeline.train_iterator(
            source, global_batch_size=4, seed=1, process_index=0, process_count=1
        )

    iterator = make()
    for _ in range(7):  # Across an epoch boundary (5 batches per epoch).
        next(iterator)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, _state(7), iterator.get_state())
    expected = [next(iterator) for _ in range(4)]

    fresh = make()
    with Checkpointer(tmp_path) as ckpt:
        restored = ckpt.restore_latest(ABSTRACT)
    fresh.set_state(restored.data_state)
    for want in expected:
        got = next(fresh)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


# Run by each of two JAX processes: a sharded state, one data state per process, a broken
# newest step that the primary garbles, and the fallback in both processes.
_MULTIPROCESS_SCRIPT = """
import sys
from pathlib import Path
import jax, numpy as np
from jax.experimental.multihost_utils import sync_global_devices
from sdn_jax.checkpointing import Checkpointer

port, pid, directory = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
mesh = jax.make_mesh((2,), ("data",))
P = jax.sharding.PartitionSpec
def array(x, spec):
    sharding = jax.sharding.NamedSharding(mesh, spec)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
def state(step):
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) * step
    return {"w": array(w, P("data")), "step": array(np.int32(step), P())}
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state(1))
with Checkpointer(directory) as ckpt:
    for step in (1, 2):
        ckpt.save(step, state(step), {"process": pid, "step": step})
    ckpt.wait_until_finished()
    sync_global_devices("saved")
    if pid == 0:
        (directory / "2" / "state" / "manifest.ocdbt").write_bytes(b"garbage")
    sync_global_devices("garbled")
    restored = ckpt.restore_latest(abstract)
    assert restored.step == 1, restored.step
    assert restored.data_state == {"process": pid, "step": 1}, restored.data_state
    for shard in restored.state["w"].addressable_shards:
        np.testing.assert_array_equal(shard.data, np.arange(24.0).reshape(8, 3)[shard.index])
    assert int(restored.state["step"]) == 1
    assert ckpt.all_steps() == [1] and (directory / "2.invalid").is_dir()
files = sorted(p.name for p in (directory / "1" / "data").glob("process_*.json"))
assert files == ["process_0-of-2.json", "process_1-of-2.json"], files
jax.distributed.shutdown()
print("OK", pid)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(script: str, folder: Path, ports=None, attempts: int = 3):
    """[(exit code, output)] of processes 0 and 1 of `script`, given a coordinator port.

    A port is free when chosen (`_free_port`, unless `ports` are given), but something
    else may take it before process 0's coordinator binds it (a free port can only be
    named, not handed over): then process 0 fails at once ("Failed to add port"),
    process 1 is stopped, and the pair runs again on another port. Any other failure is
    returned as it is.
    """
    ports = iter(ports or ())
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # One CPU device per process.
    for attempt in range(attempts):
        port, run = next(ports, None) or _free_port(), folder / f"attempt{attempt}"
        run.mkdir(parents=True)
        logs = [run / f"process{pid}.log" for pid in range(2)]
        procs = []
        for pid, log in enumerate(logs):
            with open(log, "w") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", script, str(port), str(pid), str(run / "ckpt")],
                    env=env, stdout=out, stderr=subprocess.STDOUT,
                ))  # fmt: skip
        deadline = time.monotonic() + 120
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if procs[0].poll() not in (None, 0):
                break  # the coordinator is gone: process 1 would wait for it
            time.sleep(0.05)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        outputs = [log.read_text() for log in logs]
        if "Failed to add port" not in outputs[0] or attempt == attempts - 1:
            return [(proc.returncode, out) for proc, out in zip(procs, outputs)]
    raise AssertionError("unreachable")


def test_two_processes_keep_their_own_data_states(tmp_path):
    results = _run_two_processes(textwrap.dedent(_MULTIPROCESS_SCRIPT), tmp_path)
    for pid, (code, out) in enumerate(results):
        assert code == 0 and f"OK {pid}" in out, out[-3000:]


def test_a_taken_coordinator_port_is_retried(tmp_path):
    """The first port given is held by another listener: that pair fails to start and
    the pair runs again on a free port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        script = textwrap.dedent(_COORDINATOR_ONLY_SCRIPT)
        results = _run_two_processes(script, tmp_path, ports=[taken.getsockname()[1]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attempt0", "attempt1"]
    assert "Failed to add port" in (tmp_path / "attempt0" / "process0.log").read_text()
    for pid, (code, out) in enumerate(results):
        assert code == 0 and f"OK {pid}" in out, out[-3000:]


# Only the start-up of two JAX processes.
_COORDINATOR_ONLY_SCRIPT = """
import sys
import jax
port, pid = sys.argv[1], int(sys.argv[2])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
jax.distributed.shutdown()
print("OK", pid)
"""


def test_a_relative_directory_works(tmp_path, monkeypatch):
    """`--workdir runs/default` is relative; Orbax alone fails such a save in the background."""
    monkeypatch.chdir(tmp_path)
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}
    with checkpointing.Checkpointer("runs/default/checkpoints") as checkpointer:
        assert checkpointer.save(3, state, {"next_index": 5})
        checkpointer.wait_until_finished()
        restored = checkpointer.restore_latest(jax.eval_shape(lambda: state))
    assert restored.step == 3 and restored.data_state == {"next_index": 5}
    np.testing.assert_array_equal(restored.state["w"], state["w"])
    assert (tmp_path / "runs" / "default" / "checkpoints" / "3").is_dir()
