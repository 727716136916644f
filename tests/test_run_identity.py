"""run_identity (a run's model, key and data settings fixed once it has a checkpoint) and
workdir_lock (one writer per workdir), in-process on small fake workdirs. The same
refusals through `python -m sdn_jax.main` on a copy of the tiny run: test_train.py."""

import errno
import json
import os
import signal

import pytest
import runs
from tiny_model import tiny_config, tiny_settings

from sdn_jax import run_identity, workdir_lock
from sdn_jax.run_identity import RunIdentityError


def _workdir(tmp_path, checkpoint: bool = True, **changes):
    """A workdir as main leaves it: config.json (tiny config + changes), a checkpoint."""
    run_identity.write_config(tiny_config(**changes), str(tmp_path))
    if checkpoint:
        (tmp_path / "checkpoints" / "6").mkdir(parents=True)
    return str(tmp_path)


def test_fixed_fields_are_refused_and_the_others_allowed(tmp_path, caplog):
    workdir = _workdir(tmp_path)
    config = tmp_path / "config.json"
    before = config.read_bytes()
    # Issue 18: the key attributes reordered (keys silently changed meaning), the password
    # bits changed (a traceback, then an unloadable run).
    changed = tiny_settings(**{"model.key_attributes": ("Eyeglasses", "Smiling"),
                               "model.password_bits": 24})  # fmt: skip
    with pytest.raises(RunIdentityError) as refused:
        run_identity.check(workdir, changed)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{workdir}'s checkpoints were made ")
    assert 'model.key_attributes ["Smiling", "Eyeglasses"] -> ["Eyeglasses", "Smiling"]' in message
    assert "model.password_bits 16 -> 24" in message and "another --workdir" in message
    for field, value in [("data.image_size", 64), ("data.dataset_seed", 1), ("model.widths",
                         (8, 16, 64)), ("train.ema_decay", 0.0)]:  # fmt: skip
        with pytest.raises(RunIdentityError, match=field.replace(".", r"\.")):
            run_identity.check(workdir, tiny_settings(**{field: value}))
    assert config.read_bytes() == before

    # What may change on resume is logged, not refused (ema_decay only while it stays on).
    allowed = {"train.num_steps": 12, "train.log_every_steps": 1, "eval.num_images": 8,
               "train.ema_decay": 0.9, "data.data_dir": "/elsewhere", "mesh.fsdp": 2}  # fmt: skip
    with caplog.at_level("INFO", logger="sdn_jax"):
        run_identity.check(workdir, tiny_settings(**allowed))
    assert "train.num_steps 6 -> 12" in caplog.text and "train.ema_decay 0.5 -> 0.9" in caplog.text
    # Before the first checkpoint nothing is fixed yet.
    run_identity.check(_workdir(tmp_path / "new", checkpoint=False), changed)


def test_an_unreadable_config_json_is_one_line(tmp_path):
    workdir = _workdir(tmp_path)
    config = tmp_path / "config.json"
    raw = json.loads(config.read_text())
    raw["model"]["foo"] = 1
    for content, reason in [(json.dumps(raw), "unknown config field(s): model.foo"),
                            ("[1, 2]", "must be a JSON object, got list"),
                            ("{not json", "Expecting property name")]:  # fmt: skip
        config.write_text(content)
        with pytest.raises(RunIdentityError) as refused:
            run_identity.check(workdir, tiny_settings())
        assert reason in str(refused.value) and "\n" not in str(refused.value)
        assert config.read_text() == content


def test_config_json_is_written_atomically_and_only_when_it_changes(tmp_path):
    path = tmp_path / "config.json"
    assert run_identity.write_config(tiny_config(), str(tmp_path))
    first = path.stat()
    (tmp_path / "plain").touch()  # what open() gives a new file (not mkstemp's 0600)
    assert first.st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    (tmp_path / "plain").unlink()
    assert not run_identity.write_config(tiny_config(), str(tmp_path))
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert run_identity.write_config(tiny_config(**{"train.num_steps": 9}), str(tmp_path))
    assert path.stat().st_ino != first.st_ino  # a new file renamed into place
    assert json.loads(path.read_text())["train"]["num_steps"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_one_writer_per_workdir_and_a_dead_holder_frees_it(tmp_path):
    with runs.lock_held_elsewhere(tmp_path) as holder:
        assert (tmp_path / ".lock").read_text() == f"{holder.pid}\n"
        for read_only_ok in (False, True):  # training and --mode evaluate alike
            with pytest.raises(workdir_lock.WorkdirBusy) as busy:
                with workdir_lock.held(str(tmp_path), read_only_ok=read_only_ok):
                    pass
            assert f"in use by another sdn_jax.main (pid {holder.pid}, " in str(busy.value)
        holder.send_signal(signal.SIGKILL)  # no clean-up: the OS releases the lock
        holder.wait()
    with workdir_lock.held(str(tmp_path)):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    assert (tmp_path / ".lock").read_text() == ""  # no stale pid once released


def test_a_read_only_run_is_locked_without_writing(tmp_path, monkeypatch):
    """--mode evaluate on a run it may not write: the existing lock file is locked read-only
    (a writer still excludes it); with none, and none can be made, nobody can be writing."""
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with workdir_lock.held(str(tmp_path), read_only_ok=True):
        assert not (tmp_path / ".lock").exists()
    with pytest.raises(PermissionError):
        with workdir_lock.held(str(tmp_path)):
            pass
    (tmp_path / ".lock").write_text("")
    with workdir_lock.held(str(tmp_path), read_only_ok=True):
        monkeypatch.setattr(os, "open", real_open)
        with pytest.raises(workdir_lock.WorkdirBusy, match="has not written yet"):
            with workdir_lock.held(str(tmp_path)):
                pass
