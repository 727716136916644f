"""The security study's keys: each face's right key and the wrong keys it is tried with.

Every key is {-0.5, +0.5} numpy, one row per face (or per tried key), drawn from a
`jax.random` key, so that a study's seed fixes them all (sdn_jax.evaluation.security).
"""

import jax
import jax.numpy as jnp
import numpy as np

from sdn_jax import keys
from sdn_jax.settings import Model


def right_keys(rng, num_faces: int, model: Model) -> tuple[np.ndarray, np.ndarray]:
    """One random (password, attributes) per face, {-0.5, +0.5}."""
    rng_p, rng_a = jax.random.split(rng)
    password = keys.random_passwords(rng_p, num_faces, model.password_bits)
    attributes = keys.random_attributes(rng_a, num_faces, len(model.key_attributes))
    return np.asarray(password), np.asarray(attributes)


def hamming_distances(settings, password_bits: int) -> list[int]:
    """The studied distances: the settings' plus 0, 1 and K/2, at most K, ascending."""
    wanted = {int(d) for d in settings.hamming_distances} | {0, 1, password_bits // 2}
    if min(wanted) < 0:
        raise ValueError(f"hamming_distances must be >= 0, got {sorted(wanted)}")
    return sorted(d for d in wanted if d <= password_bits)


def password_at_distance(rng, password: np.ndarray, distance: int) -> np.ndarray:
    """Each row of `password` with exactly `distance` distinct random bits flipped."""
    return np.asarray(keys.flip_bits(rng, jnp.asarray(password), int(distance)))


def attribute_flipped(attributes: np.ndarray, index: int) -> np.ndarray:
    """The attribute choices with key attribute `index` flipped in every row."""
    flipped = np.array(attributes, np.float32, copy=True)
    flipped[:, index] = -flipped[:, index]
    return flipped


def random_attack_keys(rng, password: np.ndarray, count: int, num_attributes: int):
    """`count` uniform random keys for one face; the password never the right one."""
    rng_p, rng_a = jax.random.split(rng)
    right = jnp.broadcast_to(jnp.asarray(password), (count, password.shape[-1]))
    wrong = keys.wrong_passwords(rng_p, right, few_bits_fraction=0.0)  # all uniform
    return np.asarray(wrong), np.asarray(keys.random_attributes(rng_a, count, num_attributes))
