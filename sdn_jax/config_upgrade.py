"""An older run's config.json in this version's fields, so its checkpoints still load.

Fields a run predates get the values its code ran with; settings of experiments that
were not adopted, removed with their code, are dropped at their neutral value and refused
at any other (this version cannot reproduce such a run).
"""

from collections.abc import Mapping

from sdn_jax.settings import SettingsError

# Fields an older run's config.json may lack: the value it ran with (its code's default).
# Sections are named by their path ("eval.report"); a missing section is a value too.
_LEGACY_VALUES = {
    "model": {
        "recovery": "conditioned",
        "key_features": 0,
        "key_frequency": 3.0,
        "classifier_embedding_head": "pooled",
        "dtype": "float32",
    },
    "data": {"photos_per_person_in_batch": 1, "in_memory_mb": 0.0},
    "train": {"generator_batch_size": None, "classifier_warmup_steps": 0, "ema_decay": 0.0},
    "loss": {"critic_recolour": 0.0, "classifier_recolour": 0.0},
    "eval.attacker": {"max_train_images": None},
    # Runs before the realism judge: none (its settings are this version's defaults).
    "eval.report": {"realism": False},
    "eval": {
        "realism": {
            "seed": 20250404,
            "num_faces": 400,
            "kid_subsets": 100,
            "kid_subset_size": 100,
            "inception_batch_size": 8,
            "cnn_steps": 600,
            "cnn_batch_size": 64,
            "logistic_steps": 300,
            "logistic_l2": 1e-2,
        }
    },
}

# Settings of experiments that were not adopted, removed with their code; an older run
# that used one at anything but its neutral value cannot be reproduced by this version
# (docs/experiments.md has their results; git history has their code).
RETIRED = {
    "model": {"warp_pixels": 0.0, "linear_range": 0.0},
    "loss": {
        "critic_shift": 0,
        "critic_flip": 0.0,
        "identity_damaged": 0.0,
        "classifier_damage": 0.0,
        "identity_target": "photo",
        "identity_power": 1.0,
        "keep_wrong": 0.0,
        "wrong_attributes": 0.0,
        "identity_removal": 0.0,
        "recovered_identity": 0.0,
        "classifier_identity": 0.0,
        "attribute_common_change": 0.0,
    },
}


def upgrade(raw: Mapping) -> dict:
    """An older run's config (a dict from its config.json) in this version's fields.

    Fields it predates get the values it ran with; retired experiment settings at their
    neutral value are dropped; one at another value is a SettingsError naming it.
    """
    if not isinstance(raw, Mapping):
        raise SettingsError(f"a run's config must be a JSON object, got {type(raw).__name__}")
    config = _copy(raw)
    for name, fields in RETIRED.items():
        block = config.get(name)
        if not isinstance(block, dict):
            continue
        for field, neutral in fields.items():
            if field in block and block.pop(field) != neutral:
                raise SettingsError(
                    f"{name}.{field} is a retired experiment setting (set in this run to "
                    f"{raw[name][field]!r}); this version of sdn-jax cannot reproduce it"
                )
    for path, fields in _LEGACY_VALUES.items():
        block = config
        for name in path.split("."):
            block = block.get(name) if isinstance(block, dict) else None
        if isinstance(block, dict):
            for field, value in fields.items():
                block.setdefault(field, _copy(value))
    return config


def _copy(value):
    """Nested mappings as new dicts: the upgrade never changes its input."""
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    return value
