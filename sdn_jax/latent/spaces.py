"""Where an edit enters G: the latent spaces that sdn_jax.latent reads and moves.

G reads the encoder's vector z only through its condition MLP, whose input is
u = [Fourier features of the key, the key's attribute choices as they are, z] and whose
output h (the "embedding") feeds every FiLM head; the bottleneck map and the skips carry
the image itself. An edit is an additive change in one of four places:

- "z":         the encoder's pooled vector (u's last latent_dim entries);
- "key":       the key's attribute choices as G reads them as they are (u's raw attribute
               entries; the Fourier features, which decide the surrogate identity, stay);
- "embedding": h, what the FiLM heads read;
- "features":  the bottleneck map (the same change at every position).

All functions are pure and jit-able; `networks`/`params` are those of sdn.build_networks.
"""

import jax
import jax.numpy as jnp

from sdn_jax.models.decoder import DecoderEdit, fourier_features
from sdn_jax.models.sdn import apply

SPACES = ("z", "key", "embedding", "features")


def _decoder_parts(networks, params):
    decoder = networks["decoder"]
    return decoder, params["decoder"]


def mlp_input(networks, params, latent, condition) -> jax.Array:
    """u = [key features, attribute choices, z] as G builds it (decoder.Decoder)."""
    decoder, p = _decoder_parts(networks, params)
    direction, key = condition[:, :1], condition[:, 1:]
    if decoder.key_features:
        attributes = key[:, key.shape[-1] - decoder.num_attributes :]
        key = jnp.concatenate([fourier_features(key, p["key_projection"]), attributes], -1)
    parts = [key, latent.vector]
    if decoder.recovery == "conditioned":
        parts.insert(0, direction)
    return jnp.concatenate(parts, axis=-1)


def attribute_slots(networks, num_inputs: int) -> slice:
    """Where u holds the key's attribute choices (they end just before z)."""
    decoder = networks["decoder"]
    latent_dim = num_inputs - _key_width(decoder) - (decoder.recovery == "conditioned")
    end = num_inputs - latent_dim
    return slice(end - decoder.num_attributes, end)


def _key_width(decoder) -> int:
    return decoder.key_features + decoder.num_attributes if decoder.key_features else 0


def embedding(networks, params, latent, condition) -> jax.Array:
    """h: the condition MLP's output, what the FiLM heads read."""
    p = _decoder_parts(networks, params)[1]
    u = mlp_input(networks, params, latent, condition)
    for name in ("Dense_0", "Dense_1"):
        u = jax.nn.leaky_relu(u @ p[name]["kernel"] + p[name]["bias"], 0.2)
    return u


def latents(networks, params, images, condition) -> dict:
    """Every space's latent of a batch: {"z", "key", "embedding", "features"}, each (B, D);
    "features" is the bottleneck map averaged over positions."""
    latent = apply(networks["encoder"], params["encoder"], images)
    u = mlp_input(networks, params, latent, condition)
    return {
        "z": latent.vector,
        "key": u[:, attribute_slots(networks, u.shape[-1])],
        "embedding": embedding(networks, params, latent, condition),
        "features": latent.features.mean(axis=(1, 2)),
    }


def decode_edited(networks, params, images, condition, space: str, delta: jax.Array):
    """G(E(images), condition) with `delta` (B, D) added to the latent of `space`."""
    if space not in SPACES:
        raise ValueError(f"unknown latent space {space!r}; choose from {SPACES}")
    latent = apply(networks["encoder"], params["encoder"], images)
    edit = None
    if space == "features":
        latent = latent.replace(features=latent.features + delta[:, None, None, :])
    elif space == "embedding":
        edit = DecoderEdit(embedding=delta)
    else:
        width = mlp_input(networks, params, latent, condition).shape[-1]
        where = (
            slice(width - latent.vector.shape[-1], width)
            if space == "z"
            else attribute_slots(networks, width)
        )
        full = jnp.zeros((delta.shape[0], width), delta.dtype).at[:, where].set(delta)
        edit = DecoderEdit(inputs=full)
    return apply(networks["decoder"], params["decoder"], latent, condition, images, edit)


def reading_weights(networks, params, space: str) -> jax.Array:
    """(D, out) weights of G's first layer that reads `space`'s latent (for SeFa): the
    condition MLP's first layer's rows for z / the attribute choices, the FiLM heads for
    the embedding, the bottleneck block's first conv summed over its taps for features."""
    p = params["decoder"]
    if space == "embedding":
        dense = sorted((k for k in p if k.startswith("Dense_")), key=lambda k: int(k[6:]))
        heads = [p[k]["kernel"] for k in dense[2:]]
        return jnp.concatenate(heads, axis=-1)
    if space == "features":
        return p["ResBlock_0"]["Conv_0"]["kernel"].sum(axis=(0, 1))
    kernel = p["Dense_0"]["kernel"]
    width = kernel.shape[0]
    latent_dim = params["encoder"]["Dense_0"]["kernel"].shape[-1]
    if space == "z":
        return kernel[width - latent_dim :]
    return kernel[attribute_slots(networks, width)]
