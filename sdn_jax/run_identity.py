"""A run's identity: the settings its checkpoints and keys depend on, fixed once it has one.

A run's weights only make sense with the settings that shaped them and gave its keys their
meaning: every `model.*` field but the compute dtype (shapes, password bits, the key
attributes and their order), the data set (`data.name`, `data.image_size` and, for
synth_faces, the options that make the world: its seed and sizes; the saved data position
points into it) and whether the state keeps moving averages of E and G (`train.ema_decay`
on or off). Re-running `main` on a workdir that has checkpoints compares these with its
config.json before anything is written; a difference is a RunIdentityError naming the
fields, and config.json stays as it was. Before the first checkpoint there are no weights
to protect and a new config simply replaces config.json. Everything else may change on
resume (README, "What may change on resume") and is logged as it takes effect.
"""

import dataclasses
import json
import logging
import os

from sdn_jax import config_upgrade
from sdn_jax import settings as settings_lib
from sdn_jax.atomic_files import written_atomically
from sdn_jax.data import SYNTH_FACES_OPTIONS

log = logging.getLogger("sdn_jax")

CONFIG_FILE = "config.json"
_SHOWN = 6  # changed fields named in one error line


class RunIdentityError(Exception):
    """The config changes what a run's checkpoints or keys mean, or its record is unusable."""


def _flat(section, prefix: str) -> dict:
    """{"model.widths": (8, 16, 32), ...} of a settings dataclass, nested sections dotted."""
    flat = {}
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        name = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def fixed_fields(settings: settings_lib.Settings) -> list[str]:
    """The fields of `settings` that a run's checkpoints and keys depend on."""
    # The compute dtype is not part of a run: parameters are float32 whatever it is.
    fields = [f"model.{f.name}" for f in dataclasses.fields(settings.model) if f.name != "dtype"]
    fields += ["data.name", "data.image_size"]
    if settings.data.name == "synth_faces":
        fields += [f"data.{name}" for name in SYNTH_FACES_OPTIONS]
    return [*fields, "train.ema_decay"]


def _same(name: str, old, new) -> bool:
    if name == "train.ema_decay":  # the averages' decay may change; keeping them may not
        return (old > 0) == (new > 0)
    return old == new


def _shown(value) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def changes(stored: settings_lib.Settings, new: settings_lib.Settings) -> tuple[list, list]:
    """(fixed fields that differ, other fields that differ), each as "field old -> new"."""
    old_flat, new_flat = _flat(stored, ""), _flat(new, "")
    fixed = set(fixed_fields(stored)) | set(fixed_fields(new))
    refused, allowed = [], []
    for name in sorted(old_flat.keys() | new_flat.keys()):
        old, value = old_flat.get(name), new_flat.get(name)
        if old != value:
            change = f"{name} {_shown(old)} -> {_shown(value)}"
            (refused if name in fixed and not _same(name, old, value) else allowed).append(change)
    return refused, allowed


def has_checkpoints(workdir: str) -> bool:
    """Whether the run ever started saving weights (finished, temporary or set-aside steps)."""
    try:
        return any(name[:1].isdigit() for name in os.listdir(os.path.join(workdir, "checkpoints")))
    except (FileNotFoundError, NotADirectoryError):
        return False


def stored_settings(workdir: str) -> settings_lib.Settings | None:
    """The settings recorded in `workdir`/config.json (an older version's upgraded), None
    if there is none; a RunIdentityError if it cannot be read as a run's config."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
        return settings_lib.from_config(config_upgrade.upgrade(raw))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # ValueError: not JSON, or a SettingsError
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise RunIdentityError(
            f"{path} cannot be read as this run's config ({reason}); it records the settings "
            "its checkpoints were made with: restore it, or start a new run in another --workdir"
        ) from None


def check(workdir: str, settings: settings_lib.Settings) -> None:
    """Refuses (RunIdentityError) settings that change what the run's checkpoints mean;
    logs the other changes, which take effect from the resumed step on."""
    if not has_checkpoints(workdir):
        return
    stored = stored_settings(workdir)
    if stored is None:
        log.warning(
            "%s has checkpoints but no %s: they cannot be checked against this config "
            "(a changed key attribute order would go unnoticed)", workdir, CONFIG_FILE
        )  # fmt: skip
        return
    refused, allowed = changes(stored, settings)
    if refused:
        more = f", and {len(refused) - _SHOWN} more" if len(refused) > _SHOWN else ""
        raise RunIdentityError(
            f"{workdir}'s checkpoints were made with other model, key or data settings: "
            f"{'; '.join(refused[:_SHOWN])}{more} (these are fixed once a run has a "
            "checkpoint: start a new run in another --workdir; its config.json is unchanged)"
        )
    if allowed:
        log.info("Settings changed since the run's last start: %s", "; ".join(allowed))


def write_config(config, workdir: str) -> bool:
    """Writes `workdir`/config.json (atomically) if its content changes; True if it did."""
    path = os.path.join(workdir, CONFIG_FILE)
    text = config.to_json_best_effort(indent=2, sort_keys=True).encode()
    try:
        with open(path, "rb") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    with written_atomically(path) as f:
        f.write(text)
    return True
