"""Edits for the file commands: `anonymize/deanonymize --edit` and the face editor.

They edit in the "key" space (spaces.py): the key's attribute choices as G reads them,
with the Fourier key features (the surrogate identity) left as they are. One degree is
KEY_DEGREE, the standard deviation of the choices themselves (+-0.5), so +2 degrees moves
an attribute from "off" to "on". This needs no training data and no fitted probe (the
direction is exact), and on the default run it edits as well as the best probe
(docs/experiments.md, "Latent space"). Only the run's key attributes can be edited.
"""

import functools

import jax
import numpy as np

from sdn_jax import keys
from sdn_jax.batching import map_in_batches
from sdn_jax.latent import spaces

KEY_DEGREE = 0.5  # one degree in the key space: the std of the +-0.5 choices
SPACE = "key"


def key_delta(key_attributes, edits: dict[str, float]) -> np.ndarray:
    """(A,) the change of the attribute choices for {name: degrees}."""
    delta = np.zeros(len(key_attributes), np.float32)
    for name, degrees in edits.items():
        delta[list(key_attributes).index(name)] = degrees * KEY_DEGREE
    return delta


@functools.partial(jax.jit, static_argnums=(0, 1))
def _edited(encoder, decoder, params, images, direction, password, attributes, delta):
    condition = keys.condition_vector(direction, password, attributes)
    networks = {"encoder": encoder, "decoder": decoder}
    return spaces.decode_edited(networks, params, images, condition, SPACE, delta)


def run_edited(model, images, key, direction: float, edits: dict[str, float]) -> np.ndarray:
    """Model.anonymize / Model.recover (direction) with the edit applied inside G."""
    images = np.asarray(images, np.float32)
    if not len(images):
        return images
    count = len(images)
    password = np.broadcast_to(key.password, (count, model.run.model.password_bits))
    attributes = np.broadcast_to(key.attributes, (count, len(model.key_attributes)))
    delta = np.broadcast_to(key_delta(model.key_attributes, edits), attributes.shape)
    encoder, decoder = model.networks["encoder"], model.networks["decoder"]
    run = lambda x, p, a, d: _edited(  # noqa: E731
        encoder, decoder, model.params, x, np.float32(direction), p, a, d
    )
    return map_in_batches(run, [images, password, attributes, delta], model.batch_size)


def transform(direction: float, edits: dict[str, float]):
    """A transform(model, images, key) for image_cli that applies `edits`."""
    return lambda model, images, key: run_edited(model, images, key, direction, edits)
