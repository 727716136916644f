"""Edits where users want them: on an anonymized face, and on a photo (a face editor).

- anonymize with an edit: x_A' = G(E(x), anonymize, key, latent + delta); recovery applies
  the same delta, so with `recovery="inverse"` it subtracts the very change that was added
  (up to E(x_A') != E(x), as for any recovery).
- face editor (no anonymization): the edit's own effect on G's change, applied to the
  photo. For a key k, G's output is tanh(r + o(k)) with r the photo's (residual) input;
  the editor returns tanh(r + mean_k[o(k, latent + delta) - o(k, latent)]), so the
  surrogate identity that each key draws cancels and an edit by 0 degrees returns the
  photo unchanged. Averaging over a few keys keeps what the edit does for every key.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sdn_jax import keys
from sdn_jax.latent import spaces
from sdn_jax.models.decoder import _INPUT_SQUASH

EDITOR_KEYS = 4  # keys averaged by the face editor
EDITOR_SEED = 1717  # fixed: the editor is a deterministic function of the photo and edit
_SATURATED = 1.0 - 1e-6  # tanh outputs are clipped here before arctanh


def editor_conditions(model_settings, num_keys: int = EDITOR_KEYS) -> jax.Array:
    """(num_keys, condition size) fixed random anonymizing keys for the face editor (the
    attribute choices random too: the editor asks nothing of the face but the edit)."""
    rng_p, rng_a = jax.random.split(jax.random.key(EDITOR_SEED))
    password = keys.random_passwords(rng_p, num_keys, model_settings.password_bits)
    choices = keys.random_attributes(rng_a, num_keys, len(model_settings.key_attributes))
    return keys.condition_vector(keys.ANONYMIZE, password, choices)


def _pre_tanh(y: jax.Array) -> jax.Array:
    return jnp.arctanh(jnp.clip(y, -_SATURATED, _SATURATED))


def edit_photos(networks, params, images, conditions, space: str, delta) -> jax.Array:
    """The face editor (module docstring): images (B, S, S, 3) in [-1, 1], conditions
    (K, C) keys to average over, delta (B, D) in `space`. Returns edited images."""

    def change(condition):
        c = jnp.broadcast_to(condition, (images.shape[0], condition.shape[-1]))
        edited = spaces.decode_edited(networks, params, images, c, space, delta)
        plain = spaces.decode_edited(networks, params, images, c, space, jnp.zeros_like(delta))
        return _pre_tanh(edited) - _pre_tanh(plain)

    mean_change = jax.lax.map(change, conditions).mean(axis=0)
    edited = jnp.tanh(jnp.arctanh(_INPUT_SQUASH * images) + mean_change) / _INPUT_SQUASH
    return jnp.clip(edited, -1.0, 1.0)


def parse_edits(text: str, known) -> dict[str, float]:
    """ "Smiling=+1,Mustache=-2" -> {"Smiling": 1.0, "Mustache": -2.0}; ValueError (one
    line) for an unknown name, a repeated one or a degree that is not a finite number."""
    edits = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"edit {part!r} is not NAME=DEGREES (e.g. Smiling=+1)")
        if name not in known:
            raise ValueError(f"unknown attribute {name!r} in --edit; editable: {', '.join(known)}")
        if name in edits:
            raise ValueError(f"attribute {name!r} is edited twice")
        try:
            degrees = float(value)
        except ValueError:
            raise ValueError(f"degrees of {name} must be a number, got {value!r}") from None
        if not np.isfinite(degrees) or abs(degrees) > 10:
            raise ValueError(f"degrees of {name} must be between -10 and +10, got {value!r}")
        edits[name] = degrees
    if not edits:
        raise ValueError("--edit names no attribute (e.g. Smiling=+1)")
    return edits


def edit_text(edits: dict[str, float]) -> str:
    """{"Smiling": 1.0} -> "Smiling=+1", the --edit that gives `edits`."""
    return ",".join(f"{name}={degrees:+g}" for name, degrees in edits.items())
