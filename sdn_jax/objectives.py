"""What each network minimises in a training step, as pure functions of its params.

The generator side (E, G, Q) against the current D, C and q; D and C on real images
and on the generator's fakes; the CLUB network q on detached embeddings. The terms
themselves are in losses.py, their weights in `settings.loss` (METHOD.md section 4).
"""

import jax
import jax.numpy as jnp

from sdn_jax import augment, keys, losses
from sdn_jax.data import attributes as attr_lib
from sdn_jax.models import sdn
from sdn_jax.models.sdn import apply
from sdn_jax.settings import Settings

# Generator terms that act from the first full step; the others ramp in (loss.ramp_steps).
_ALWAYS_ON = ("recovery", "keep_anonymized", "wrong_distance", "change_anonymized")


def sample_keys(rng: jax.Array, batch: int, settings: Settings) -> dict:
    """Random right keys (p, a_t), a second password p2 and wrong keys (p', a')."""
    rng_p, rng_p2, rng_a, rng_w = jax.random.split(rng, 4)
    bits, num_attributes = settings.model.password_bits, len(settings.model.key_attributes)
    password = keys.random_passwords(rng_p, batch, bits)
    target = keys.random_attributes(rng_a, batch, num_attributes)
    wrong_password, wrong_attributes = keys.wrong_keys(rng_w, password, target)[:2]
    return dict(
        password=password,
        password2=keys.random_passwords(rng_p2, batch, bits),
        attributes=target,
        wrong_password=wrong_password,
        wrong_attributes=wrong_attributes,
    )


def ramp(step, settings: Settings):
    """0 -> 1 over loss.ramp_steps after the classifier's warm-up: a short phase where
    reconstruction dominates the generator's loss."""
    since = step.astype(jnp.float32) - settings.train.classifier_warmup_steps
    return jnp.clip(since / max(1, settings.loss.ramp_steps), 0.0, 1.0)


def critic_inputs(rng, x, generated, recolour: float):
    """C's input in the generator loss: the real batch, then the generated ones. With an
    rng, `recolour` of the generated images are seen recoloured, so G cannot fool C by
    retinting, which the attacker sees through (docs/experiments.md, e31)."""
    generated = jnp.concatenate(generated)
    if rng is not None and recolour > 0:
        # The split's first half drew the shift/flip views of e30 (not adopted); the
        # colour key keeps its place so the default run's numbers stay as measured.
        _, colour_rng = jax.random.split(rng)
        generated = augment.recolour(colour_rng, generated, recolour)
    return jnp.concatenate([x, generated])


def generator_terms(params, networks, batch, key, settings: Settings, rng=None):
    """Every generator loss term (unweighted) and the outputs they were computed on."""
    w = settings.loss
    x = batch["image"]
    out = sdn.dual_pass(networks, params, x, key, w.recovery_grad_scale)
    x_a, x_a2, x_r, x_w = out
    fakes = jnp.concatenate([x_a, x_r, x_w])
    scores = apply(networks["discriminator"], params["discriminator"], fakes)
    critic_input = critic_inputs(rng, x, list(out), w.critic_recolour)
    c = apply(networks["classifier"], params["classifier"], critic_input)
    f_real, f_a, f_a2, f_r, f_w = jnp.split(c.embedding, 5)
    attributes_a = jnp.split(c.attribute_logits, 5)[1]
    f_x = jax.lax.stop_gradient(f_real)
    key_index = jnp.asarray(attr_lib.attribute_indices(settings.model.key_attributes))
    mean, log_var = apply(networks["club"], params["club"], f_x, f_x.shape[-1])
    q_logits = apply(networks["key_predictor"], params["key_predictor"], x, x_a)
    terms = {
        "adversarial": losses.lsgan_generator(scores),
        "recovery": losses.l1(x_r, x),
        "keep_anonymized": losses.closeness_margin(x_a, x, w.keep_margin)
        + losses.closeness_margin(x_a2, x, w.keep_margin),
        "change_anonymized": losses.distance_margin(x_a, x, w.change_margin)
        + losses.distance_margin(x_a2, x_a, w.change_margin),
        "wrong_distance": losses.distance_margin(x_w, x, w.wrong_margin),
        "attributes": losses.attribute_bce(attributes_a[:, key_index], key["attributes"] + 0.5),
        "identity_embedding": losses.dissimilarity(f_a, f_x) + losses.dissimilarity(f_w, f_x),
        "club": losses.club_upper_bound(mean, log_var, f_a),
        "diversity": losses.dissimilarity(f_a, f_a2),
        "wrong_diversity": losses.dissimilarity(f_w, jax.lax.stop_gradient(f_a)),
        "key_information": losses.key_information(q_logits, key["password"]),
        "recovered_embedding": losses.mismatch(f_r, f_x),
    }
    return terms, out, dict(f_x=f_x, f_a=jax.lax.stop_gradient(f_a))


def generator_loss(gen_params, frozen_params, networks, batch, key, step, settings, rng=None):
    """The weighted sum of `generator_terms`; aux: the terms, the detached fakes
    (x_A, x_R, x_W) for D and C, and the embeddings q fits."""
    params = {**frozen_params, **gen_params}
    terms, out, embeddings = generator_terms(params, networks, batch, key, settings, rng)
    ramped = ramp(step, settings)
    total = sum(
        getattr(settings.loss, name) * value * (1.0 if name in _ALWAYS_ON else ramped)
        for name, value in terms.items()
    )
    fakes = jax.lax.stop_gradient(jnp.concatenate([out.anonymized, out.recovered, out.wrong]))
    return total, dict(terms=terms, fakes=fakes, **embeddings)


def classifier_loss(c_params, networks, batch, settings: Settings, rng=None):
    """C on real images: who it is (a contrastive loss on the embedding) and the 40
    attributes, the key ones weighted up (they are what anonymized faces must show, and
    small: glasses, a mustache).

    With loss.classifier_recolour > 0 (and an rng), a recoloured copy of the batch
    (augment.recolour) joins the contrastive loss as more photos of the same people: C
    must know people by shape, not by tint, as the attacker does.
    """
    w = settings.loss
    x, y = batch["image"], batch["identity"]
    c = apply(networks["classifier"], c_params, x)
    attributes = batch["attributes"].astype(jnp.float32)
    key_index = jnp.asarray(attr_lib.attribute_indices(settings.model.key_attributes))
    embeddings, labels = c.embedding, y
    if w.classifier_recolour > 0 and rng is not None:
        # The split's second half drew the damaged-centre copies of e52-e54 (not adopted).
        colour_rng, _ = jax.random.split(rng)
        copy = augment.recolour(colour_rng, x, w.classifier_recolour)
        embeddings = jnp.concatenate(
            [embeddings, apply(networks["classifier"], c_params, copy).embedding]
        )
        labels = jnp.concatenate([y, y])
    c_contrastive = losses.supervised_contrastive(embeddings, labels, w.contrastive_temperature)
    c_attributes = losses.attribute_bce(c.attribute_logits, attributes)
    c_key_attributes = losses.attribute_bce(
        c.attribute_logits[:, key_index], attributes[:, key_index]
    )
    total = (
        w.classifier_contrastive * c_contrastive
        + c_attributes
        + w.classifier_key_attributes * c_key_attributes
    )
    key_hits = (c.attribute_logits[:, key_index] > 0) == (attributes[:, key_index] > 0.5)
    metrics = dict(
        c_contrastive=c_contrastive,
        c_attributes=c_attributes,
        c_key_attributes=c_key_attributes,
        c_train_key_attribute_accuracy=jnp.mean(key_hits),
    )
    return total, (metrics, c.embedding)


def generator_share(tree, settings: Settings):
    """What G and D train on: every m-th image of the batch, m = global_batch_size /
    generator_batch_size. C's real-image losses see the whole batch: a recogniser learns
    from many people per step, and C costs a fraction of G. With m =
    data.photos_per_person_in_batch, G's share holds one photo of each person (e44-e47)."""
    step = settings.train.global_batch_size // settings.train.generator_images
    return tree if step == 1 else jax.tree.map(lambda v: v[::step], tree)


def discriminator_classifier_loss(dc_params, networks, batch, fakes, settings, rng=None):
    """D: LSGAN real vs the three fakes [x_A, x_R, x_W]. C: `classifier_loss` on real
    images, plus linking x_A and x_W back to the original's embedding (an adversary to G;
    x_R is left to D)."""
    g_batch = generator_share(batch, settings)
    real_scores = apply(networks["discriminator"], dc_params["discriminator"], g_batch["image"])
    fake_scores = apply(networks["discriminator"], dc_params["discriminator"], fakes)
    d_loss = losses.lsgan_discriminator(real_scores, fake_scores)
    c_real, (metrics, f_x) = classifier_loss(
        dc_params["classifier"], networks, batch, settings, rng
    )
    anonymized, _, wrong = jnp.split(fakes, 3)
    c = apply(networks["classifier"], dc_params["classifier"], jnp.concatenate([anonymized, wrong]))
    f_a, f_w = jnp.split(c.embedding, 2)
    f_x = jax.lax.stop_gradient(generator_share(f_x, settings))
    c_adversarial = losses.mismatch(f_a, f_x) + losses.mismatch(f_w, f_x)
    c_loss = c_real + settings.loss.classifier_adversarial * c_adversarial
    metrics = dict(metrics, d_total=d_loss, c_adversarial=c_adversarial, c_total=c_loss)
    return d_loss + c_loss, metrics


def club_loss(club_params, networks, f_x, f_a):
    """q fits log q(f(x_A) | f(x)) on detached embeddings (CLUB's variational step)."""
    mean, log_var = apply(networks["club"], club_params, f_x, f_x.shape[-1])
    return -jnp.mean(losses.gaussian_log_likelihood(mean, log_var, f_a))
