"""SDN as one model: its networks, their parameters, and the passes through E and G.

Training (objectives.py), inference, the sample grids and the evaluation all run the
passes defined here, so they judge the same images:
  x_A  = G(E(x),   anonymize, p,  a_t)       anonymized
  x_A2 = G(E(x),   anonymize, p2, a_t)       the same face under a second password
  x_R  = G(E(x_A), recover,   p,  a_t)       recovered: should be x
  x_W  = G(E(x_A), recover,   p', a')        wrong key: another face, not x
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdn_jax import keys
from sdn_jax.models.auxiliary import ClubNetwork, KeyPredictor
from sdn_jax.models.classifier import Classifier
from sdn_jax.models.decoder import Decoder
from sdn_jax.models.discriminator import Discriminator
from sdn_jax.models.encoder import Encoder
from sdn_jax.models.precision import MixedPrecision, with_compute_dtype
from sdn_jax.settings import Model

NETWORKS = ("encoder", "decoder", "key_predictor", "discriminator", "classifier", "club")


class DualOutputs(NamedTuple):
    """The four generated batches of one training step (see the module docstring)."""

    anonymized: jax.Array
    anonymized2: jax.Array
    recovered: jax.Array
    wrong: jax.Array


def condition_size(model: Model) -> int:
    """Direction flag + password bits + key attributes."""
    return 1 + model.password_bits + len(model.key_attributes)


def build_networks(model: Model) -> dict:
    """The six networks, keyed as in the params dict, computing in `model.dtype`."""
    networks = {
        "encoder": Encoder(model.widths, model.encoder_res_blocks, model.latent_dim),
        "decoder": Decoder(
            model.widths,
            model.decoder_res_blocks,
            model.condition_hidden,
            model.use_skips,
            model.residual_output,
            recovery=model.recovery,
            key_features=model.key_features,
            key_frequency=model.key_frequency,
            num_attributes=len(model.key_attributes),
        ),
        "key_predictor": KeyPredictor(model.password_bits, model.key_predictor_widths),
        "discriminator": Discriminator(model.discriminator_widths, model.discriminator_scales),
        "classifier": Classifier(
            widths=model.classifier_widths,
            embedding_dim=model.embedding_dim,
            flatten_embedding=model.classifier_embedding_head == "flatten",
        ),
        "club": ClubNetwork(model.club_hidden),
    }
    return with_compute_dtype(networks, model.dtype)


def init_params(rng: jax.Array, networks: dict, model: Model, image_size: int) -> dict:
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    condition = jnp.zeros((1, condition_size(model)), jnp.float32)
    rngs = dict(zip(NETWORKS, jax.random.split(rng, len(NETWORKS))))
    init = lambda name, *args: networks[name].init(rngs[name], *args)["params"]  # noqa: E731
    params = {"encoder": init("encoder", images)}
    latent = apply(networks["encoder"], params["encoder"], images)
    params["decoder"] = init("decoder", latent, condition, images)
    params["key_predictor"] = init("key_predictor", images, images)
    params["discriminator"] = init("discriminator", images)
    params["classifier"] = init("classifier", images)
    embedding = jnp.zeros((1, model.embedding_dim), jnp.float32)
    params["club"] = init("club", embedding, model.embedding_dim)
    return params


def apply(network: nn.Module | MixedPrecision, params, *args, **kwargs):
    return network.apply({"params": params}, *args, **kwargs)


def decode(networks: dict, params: dict, latent, condition: jax.Array, inputs: jax.Array):
    """G(latent, condition, inputs)."""
    return apply(networks["decoder"], params["decoder"], latent, condition, inputs)


def generate(networks: dict, params: dict, images: jax.Array, condition: jax.Array) -> jax.Array:
    """G(E(images), condition, images): one anonymizing or recovering pass."""
    latent = apply(networks["encoder"], params["encoder"], images)
    return decode(networks, params, latent, condition, images)


def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """x in the forward pass; its gradient multiplied by `scale` in the backward pass."""
    if scale == 1.0:
        return x
    return scale * x + (1.0 - scale) * jax.lax.stop_gradient(x)


def dual_pass(
    networks: dict, params: dict, images: jax.Array, key: dict, recovery_grad_scale: float = 1.0
) -> DualOutputs:
    """The four generated batches of a training step, with shared E calls and G calls on
    doubled batches (bigger convolutions are cheaper per image).

    recovery_grad_scale scales the gradient that the recovery pass sends back into x_A:
    at full strength the recovery loss simply pulls x_A back to x (nothing to undo), and
    the anonymization never starts.
    """
    n = images.shape[0]
    anon = keys.condition_vector(keys.ANONYMIZE, key["password"], key["attributes"])
    anon2 = keys.condition_vector(keys.ANONYMIZE, key["password2"], key["attributes"])
    recover = keys.condition_vector(keys.RECOVER, key["password"], key["attributes"])
    wrong = keys.condition_vector(keys.RECOVER, key["wrong_password"], key["wrong_attributes"])

    def decode_twice(latent, condition_a, condition_b, inputs):
        doubled = jax.tree.map(lambda x: jnp.concatenate([x, x]), latent)
        both = jnp.concatenate([condition_a, condition_b])
        out = decode(networks, params, doubled, both, jnp.concatenate([inputs, inputs]))
        return out[:n], out[n:]

    latent = apply(networks["encoder"], params["encoder"], images)
    anonymized, anonymized2 = decode_twice(latent, anon, anon2, images)
    anonymized_in = scale_gradient(anonymized, recovery_grad_scale)
    latent_anonymized = apply(networks["encoder"], params["encoder"], anonymized_in)
    recovered, wrong_recovered = decode_twice(latent_anonymized, recover, wrong, anonymized_in)
    return DualOutputs(anonymized, anonymized2, recovered, wrong_recovered)
