"""compilation_cache.enable: the user's cache folder unless JAX's own variable says
otherwise (set: that folder; empty: off). The commands call it: test_train's runs log
the folder, test_anonymize_cli_errors' subprocess fills the user's cache."""

import jax
import pytest

from sdn_jax import compilation_cache

_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


@pytest.fixture
def jax_options():
    """The process's cache options, put back afterwards (the session's cache)."""
    saved = {name: getattr(jax.config, name) for name in _OPTIONS}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_the_user_cache_by_default(jax_options, monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = str(tmp_path / "sdn_jax" / "xla")
    assert compilation_cache.enable() == folder
    assert jax.config.jax_compilation_cache_dir == folder
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0


def test_a_folder_that_cannot_be_made_turns_it_off(jax_options, monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    before = jax.config.jax_compilation_cache_dir
    with caplog.at_level("WARNING", logger="sdn_jax"):
        assert compilation_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir == before
    assert [r.getMessage() for r in caplog.records] == [
        f"Cannot write {tmp_path / 'file' / 'sdn_jax' / 'xla'}: compiled programs are not kept"
    ]


def test_jax_variable_wins_and_empty_turns_it_off(jax_options, monkeypatch, tmp_path):
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert compilation_cache.enable() == str(tmp_path / "mine")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    assert compilation_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir == before  # left to JAX
