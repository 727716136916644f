"""Training the attacker's two networks on original training images.

* Identity: a `Recognizer` trained with a CosFace loss (additive cosine margin) on
  in-batch prototypes. A batch is P people x K photos; each photo is classified among
  the batch's P people by cosine similarity to each person's mean embedding (its own
  person's mean leaves the photo out), with the margin subtracted from the true
  person's cosine. Measured against a CosFace head over all 1,000 training people at the
  same budget (docs/experiments.md): a global head barely moves in the ~2 epochs a CPU
  budget allows (each person's weight vector is updated a few dozen times), prototypes
  give a useful gradient from the first step.
* Colour: half of the identity training images are recoloured (hue rotation, per-channel
  gain, brightness, sometimes grey, over the whole image or a smooth random region). An
  anonymizer that only retints a face must not get past the attacker: it has to know
  people by their geometry, not by their skin tint.
* Attributes: a separate `Recognizer` at the data's resolution (smiles and open mouths
  are a few pixels) with a binary cross-entropy on the attribute labels, no colour jitter.

Everything random comes from `jax.random` keys derived from the attacker's own seed;
batches are drawn inside the jitted step from the device-resident training set.
"""

import functools
import logging
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdn_jax import compiler
from sdn_jax.augment import damage_patch, recolour
from sdn_jax.evaluation.recognizer_model import Recognizer
from sdn_jax.images import from_uint8

log = logging.getLogger("sdn_jax")


def identity_network(settings) -> Recognizer:
    return Recognizer(
        input_size=settings.input_size,
        widths=tuple(settings.widths),
        res_blocks=settings.res_blocks,
        embedding_dim=settings.embedding_dim,
    )


def attribute_network(settings) -> Recognizer:
    return Recognizer(
        input_size=settings.attribute_input_size,
        widths=tuple(settings.attribute_widths),
        res_blocks=settings.res_blocks,
    )


def prototype_cosface_loss(embeddings: jax.Array, people: int, margin: float, scale: float):
    """CosFace over in-batch person prototypes; embeddings (P * K, D) unit, person-major.

    Photo (p, k) is scored against every person's mean embedding; for its own person the
    mean of the other K - 1 photos (leave-one-out, so a photo is not compared with itself).
    Returns (loss, accuracy of picking the right person without the margin).
    """
    e = embeddings.reshape(people, -1, embeddings.shape[-1])
    photos = e.shape[1]
    total = e.sum(axis=1)
    means = total / photos
    means = means / jnp.linalg.norm(means, axis=-1, keepdims=True)
    own = total[:, None] - e
    own = own / jnp.linalg.norm(own, axis=-1, keepdims=True)
    cosines = jnp.einsum("pkd,qd->pkq", e, means)
    same = jnp.eye(people, dtype=bool)[:, None, :]
    cosines = jnp.where(same, jnp.sum(e * own, axis=-1, keepdims=True), cosines)
    labels = jnp.broadcast_to(same, cosines.shape).astype(jnp.float32)
    logits = scale * (cosines - margin * labels)
    loss = optax.softmax_cross_entropy(logits, labels).mean()
    accuracy = jnp.mean(jnp.argmax(cosines, -1) == jnp.arange(people)[:, None])
    return loss, accuracy


def _photo_index(identities: np.ndarray, photos_per_person: int = 2):
    """Per person with at least `photos_per_person` photos (a batch draws that many of one
    person; 2 at least: a prototype needs a second photo): where its photos start in a
    person-sorted order, and how many; and how many people had too few (skipped)."""
    order = np.argsort(identities, kind="stable")
    people, starts, counts = np.unique(identities[order], return_index=True, return_counts=True)
    eligible = counts >= max(2, photos_per_person)
    if eligible.sum() < 2:
        raise ValueError(
            f"Attacker training needs at least 2 people with {max(2, photos_per_person)} or "
            "more photos each (eval.attacker.photos_per_person)"
        )
    return order, starts[eligible], counts[eligible], int((~eligible).sum())


def _optimizer(settings, steps: int) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, settings.learning_rate, max(1, steps // 20), steps, settings.learning_rate * 0.01
    )
    return optax.adamw(schedule, weight_decay=settings.weight_decay)


def cpu_seconds() -> float:
    """CPU time of this process (all threads): on a shared machine, a fairer cost than wall
    time, since XLA's threads wait for cores that other jobs hold."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(name: str, step_fn, params, opt_state, key, steps: int, log_every: int):
    """Runs `steps` jitted steps, logging loss, steps/s and ETA; returns the params."""
    start = time.time()
    for i in range(1, steps + 1):
        params, opt_state, metrics = step_fn(params, opt_state, jax.random.fold_in(key, i))
        if i % log_every == 0 or i == steps:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            rate = i / (time.time() - start)
            text = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            log.info(
                "attacker %s step %d/%d  %s  %.2f steps/s  ETA %.0fs",
                name, i, steps, text, rate, (steps - i) / rate,
            )  # fmt: skip
            if not all(np.isfinite(v) for v in metrics.values()):
                raise FloatingPointError(
                    f"Attacker {name} training diverged at step {i}: {metrics}"
                )
    return params


def train_identity(images: np.ndarray, identities: np.ndarray, settings, key: jax.Array):
    """Identity network params from uint8 images (N, H, W, 3) and person labels (N,)."""
    model = identity_network(settings)
    photos = settings.photos_per_person
    order, starts, counts, skipped = _photo_index(np.asarray(identities), photos)
    if skipped:  # CelebA has people with 2 or 3 photos
        log.info("Attacker identity training skips %d people with fewer than %d photos",
                 skipped, photos)  # fmt: skip
    people = min(settings.people_per_batch, len(starts))
    most_photos = int(counts.max())
    order, starts, counts = jnp.asarray(order), jnp.asarray(starts), jnp.asarray(counts)
    data = jnp.asarray(images)
    init_key, key = jax.random.split(key)
    params = model.init(init_key, from_uint8(data[:1]))
    optimizer = _optimizer(settings, settings.num_steps)

    @compiler.jit
    def step(params, opt_state, key, data):
        person_key, photo_key, colour_key = jax.random.split(key, 3)
        patch_key = jax.random.fold_in(key, 3)  # apart: the other streams stay as they were
        chosen = jax.random.choice(person_key, len(starts), (people,), replace=False)
        # K distinct photos per person: the first K of a random permutation of its photos
        # (by sorting random keys, masked past the person's photo count).
        noise = jax.random.uniform(photo_key, (people, most_photos))
        noise = jnp.where(jnp.arange(noise.shape[1]) < counts[chosen][:, None], noise, 2.0)
        picks = jnp.argsort(noise, axis=1)[:, :photos]
        index = order[starts[chosen][:, None] + picks].reshape(-1)
        x = recolour(colour_key, from_uint8(data[index]), settings.recolour_probability)
        x = damage_patch(patch_key, x, settings.damage_probability)

        def loss_fn(p):
            embeddings, _ = model.apply(p, x)
            return prototype_cosface_loss(embeddings, people, settings.margin, settings.scale)

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "acc": accuracy}

    return _run(
        "identity", functools.partial(step, data=data), params, optimizer.init(params), key,
        settings.num_steps, settings.log_every_steps,
    )  # fmt: skip


def train_attributes(
    images: np.ndarray,
    attributes: np.ndarray,
    settings,
    key: jax.Array,
    weights: np.ndarray | None = None,
):
    """Attribute network params from uint8 images and bool attribute labels (N, 40).

    weights: (40,) per-attribute loss weights (default 1): the attributes an anonymized face
    is asked to show are weighted up, as they are what this network is used to check.
    """
    model = attribute_network(settings)
    data, labels = jnp.asarray(images), jnp.asarray(attributes, jnp.float32)
    weights = jnp.ones(labels.shape[1]) if weights is None else jnp.asarray(weights, jnp.float32)
    init_key, key = jax.random.split(key)
    params = model.init(init_key, from_uint8(data[:1]))
    optimizer = _optimizer(settings, settings.attribute_steps)
    batch = settings.attribute_batch_size

    @compiler.jit
    def step(params, opt_state, key, data, labels):
        index = jax.random.randint(key, (batch,), 0, data.shape[0])

        def loss_fn(p):
            _, logits = model.apply(p, from_uint8(data[index]))
            # Summed over attributes: a mean over 40 (many never drawn) starved each one.
            bce = optax.sigmoid_binary_cross_entropy(logits, labels[index]) @ weights
            return bce.mean(), jnp.mean((logits > 0) == (labels[index] > 0.5))

        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "acc": accuracy}

    return _run(
        "attributes", functools.partial(step, data=data, labels=labels), params,
        optimizer.init(params), key, settings.attribute_steps, settings.log_every_steps,
    )  # fmt: skip
