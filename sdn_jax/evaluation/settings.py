"""Settings of the evaluation parts: built-in defaults that a config section overrides."""

import ml_collections


def with_overrides(defaults: ml_collections.ConfigDict, overrides, name: str):
    """`defaults` updated with the fields of `overrides` (a ConfigDict, a dict or None).

    A field the defaults do not have is a clear error naming `name` (the config section),
    so a typo in a config is never silently ignored.
    """
    if overrides is None:
        return defaults
    overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
    unknown = set(overrides) - set(defaults.keys())
    if unknown:
        raise ValueError(f"Unknown {name} fields: {sorted(unknown)}")
    defaults.update(overrides)
    return defaults


def config_section(config, section: str):
    """config.eval.<section>, or None where the config has no such section."""
    return config.get("eval", {}).get(section, None)
