"""The train step: one pure function of (state, batch), jitted and sharded by the caller.

Per step, for real images x of people y:
  x_A  = G(E(x), anonymize, p, a_t)        anonymized
  x_A2 = G(E(x), anonymize, p2, a_t)       the same face under a second password
  x_R  = G(E(x_A), recover, p, a_t)        recovered: should be x
  x_W  = G(E(x_A), recover, p', a')        wrong key: another face, not x
Same-encoder passes share one encoder call, and decoder passes share one call on a
doubled batch (bigger convolutions are cheaper per image). Update order: E/G/Q on the
generator loss (with the current D, C, q), then D and C on that pass's fakes (reused,
not recomputed), then the CLUB network q on the pass's embeddings.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sdn_jax import augment, keys, losses
from sdn_jax.data import attributes as attr_lib
from sdn_jax.state import GENERATOR_NETWORKS, TrainState, apply


def _ramp(step, config):
    """0 -> 1 over loss.ramp_steps after the classifier's warm-up: a short phase where
    reconstruction dominates the generator's loss."""
    since = step.astype(jnp.float32) - config.train.get("classifier_warmup_steps", 0)
    return jnp.clip(since / max(1, config.loss.ramp_steps), 0.0, 1.0)


def sample_keys(rng: jax.Array, batch: int, config: ml_collections.ConfigDict) -> dict:
    """Random right keys (p, a_t), a second password p2 and wrong keys (p', a')."""
    rng_p, rng_p2, rng_a, rng_w = jax.random.split(rng, 4)
    num_attributes = len(config.model.key_attributes)
    password = keys.random_passwords(rng_p, batch, config.model.password_bits)
    target = keys.random_attributes(rng_a, batch, num_attributes)
    wrong_password, wrong_attributes = keys.wrong_keys(rng_w, password, target)[:2]
    return dict(
        password=password,
        password2=keys.random_passwords(rng_p2, batch, config.model.password_bits),
        attributes=target,
        wrong_password=wrong_password,
        wrong_attributes=wrong_attributes,
    )


def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
    """x in the forward pass; its gradient multiplied by `scale` in the backward pass."""
    if scale == 1.0:
        return x
    return scale * x + (1.0 - scale) * jax.lax.stop_gradient(x)


def dual_pass(
    networks: dict, params: dict, images: jax.Array, key: dict, recovery_grad_scale: float = 1.0
) -> dict:
    """The four generator outputs of one batch (see the module docstring).

    recovery_grad_scale scales the gradient that the recovery pass sends back into x_A:
    at full strength the recovery loss simply pulls x_A back to x (nothing to undo), and
    the anonymization never starts.
    """
    n = images.shape[0]
    encoder, decoder = networks["encoder"], networks["decoder"]
    anon = keys.condition_vector(keys.ANONYMIZE, key["password"], key["attributes"])
    anon2 = keys.condition_vector(keys.ANONYMIZE, key["password2"], key["attributes"])
    recover = keys.condition_vector(keys.RECOVER, key["password"], key["attributes"])
    wrong = keys.condition_vector(keys.RECOVER, key["wrong_password"], key["wrong_attributes"])

    def decode_twice(latent, condition_a, condition_b, inputs):
        doubled = jax.tree.map(lambda x: jnp.concatenate([x, x]), latent)
        out = apply(
            decoder,
            params["decoder"],
            doubled,
            jnp.concatenate([condition_a, condition_b]),
            jnp.concatenate([inputs, inputs]),
        )
        return out[:n], out[n:]

    latent = apply(encoder, params["encoder"], images)
    anonymized, anonymized2 = decode_twice(latent, anon, anon2, images)
    anonymized_in = scale_gradient(anonymized, recovery_grad_scale)
    latent_anonymized = apply(encoder, params["encoder"], anonymized_in)
    recovered, wrong_recovered = decode_twice(latent_anonymized, recover, wrong, anonymized_in)
    return dict(
        anonymized=anonymized,
        anonymized2=anonymized2,
        recovered=recovered,
        wrong=wrong_recovered,
    )


def critic_inputs(rng, x, generated, config):
    """C's input in the generator loss: the real batch, then the generated ones. With an
    rng, every generated image is seen through its own random view: a shift of up to
    loss.critic_shift pixels, a mirror (loss.critic_flip) and a recolouring
    (loss.critic_recolour), each where its setting is > 0. Recoloured views keep G from
    fooling C by retinting, which the attacker sees through (docs/experiments.md, e31)."""
    shift = config.loss.get("critic_shift", 0)
    flip = config.loss.get("critic_flip", 0.0)
    recolour = config.loss.get("critic_recolour", 0.0)
    generated = jnp.concatenate(generated)
    if rng is not None:
        view_rng, colour_rng = jax.random.split(rng)
        if shift > 0 or flip > 0:
            generated = augment.shift_and_flip(view_rng, generated, shift, flip)
        if recolour > 0:
            generated = augment.recolour(colour_rng, generated, recolour)
    return jnp.concatenate([x, generated])


def damaged_embeddings(networks, params, rng, x_a, x_w):
    """C's embeddings of x_A and x_W with a damaged face centre (augment.damage_patch):
    what is left to tell the person by is the outline, the hair and the pose, so only
    changing those moves them. The faces the attacker still links keep exactly those
    (docs/experiments.md, "What the attacker still links"). Needs a C that knows people
    from damaged photos (loss.classifier_damage > 0)."""
    damaged = augment.damage_patch(rng, jnp.concatenate([x_a, x_w]), 1.0)
    embedding = apply(networks["classifier"], params["classifier"], damaged).embedding
    return jnp.split(embedding, 2)


def away_from(emb_a, emb_w, target, power):
    """The identity term: x_A's and x_W's embeddings pushed away from the target's."""
    return losses.dissimilarity(emb_a, target, power) + losses.dissimilarity(emb_w, target, power)


def generator_loss(gen_params, frozen_params, networks, batch, key, step, config, rng=None):
    params = {**frozen_params, **gen_params}
    w = config.loss
    x, y = batch["image"], batch["identity"]
    n = x.shape[0]
    out = dual_pass(networks, params, x, key, w.recovery_grad_scale)
    x_a, x_a2, x_r, x_w = out["anonymized"], out["anonymized2"], out["recovered"], out["wrong"]

    fakes = jnp.concatenate([x_a, x_r, x_w])
    adversarial = losses.lsgan_generator(
        apply(networks["discriminator"], params["discriminator"], fakes)
    )
    c = apply(
        networks["classifier"],
        params["classifier"],
        critic_inputs(rng, x, [x_a, x_a2, x_r, x_w], config),
    )
    emb = jnp.split(c.embedding, 5)
    ids = jnp.split(c.identity_logits, 5)
    attrs = jnp.split(c.attribute_logits, 5)
    f_x = jax.lax.stop_gradient(emb[0])
    key_index = jnp.asarray(attr_lib.attribute_indices(config.model.key_attributes))
    mean, log_var = apply(networks["club"], params["club"], f_x, f_x.shape[-1])
    q_logits = apply(networks["key_predictor"], params["key_predictor"], x, x_a)

    identity_power = w.get("identity_power", 1.0)  # runs saved before it existed: 1
    # What x_A and x_W must not look like: this photo's embedding, or the person's (the
    # mean over their photos in the batch), which is what a gallery attacker holds.
    identity_target = w.get("identity_target", "photo")
    if identity_target not in ("photo", "person"):
        raise ValueError(
            f"loss.identity_target must be 'photo' or 'person', got {identity_target!r}"
        )
    f_away = f_x if identity_target == "photo" else losses.person_centroids(f_x, y)
    terms = {
        "adversarial": adversarial,
        "recovery": losses.l1(x_r, x),
        "keep_anonymized": losses.closeness_margin(x_a, x, w.keep_margin)
        + losses.closeness_margin(x_a2, x, w.keep_margin),
        "keep_wrong": losses.closeness_margin(x_w, x_a, w.keep_margin),
        "change_anonymized": losses.distance_margin(x_a, x, w.change_margin)
        + losses.distance_margin(x_a2, x_a, w.change_margin),
        "wrong_distance": losses.distance_margin(x_w, x, w.wrong_margin),
        "attributes": losses.attribute_bce(attrs[1][:, key_index], key["attributes"] + 0.5),
        "wrong_attributes": losses.attribute_bce(
            attrs[4][:, key_index], key["wrong_attributes"] + 0.5
        ),
        "identity_removal": losses.identity_removal(ids[1], y) + losses.identity_removal(ids[4], y),
        "identity_embedding": away_from(emb[1], emb[4], f_away, identity_power),
        "club": losses.club_upper_bound(mean, log_var, emb[1]),
        "diversity": losses.dissimilarity(emb[1], emb[2]),
        "wrong_diversity": losses.dissimilarity(emb[4], jax.lax.stop_gradient(emb[1])),
        "key_information": losses.key_information(q_logits, key["password"]),
        "recovered_identity": losses.identity_cross_entropy(ids[3], y),
        "recovered_embedding": losses.mismatch(emb[3], f_x),
    }
    if w.get("identity_damaged", 0.0) > 0 and rng is not None:
        damaged = damaged_embeddings(networks, params, jax.random.fold_in(rng, 1), x_a, x_w)
        terms["identity_damaged"] = away_from(*damaged, f_away, identity_power)
    ramped = _ramp(step, config)
    always = ("recovery", "keep_anonymized", "keep_wrong", "wrong_distance", "change_anonymized")
    total = sum(w[k] * v * (1.0 if k in always else ramped) for k, v in terms.items())
    fakes = jax.lax.stop_gradient(fakes)
    aux = dict(terms=terms, fakes=fakes, f_x=f_x, f_a=jax.lax.stop_gradient(emb[1]), n=n)
    return total, aux


def classifier_loss(c_params, networks, batch, config, rng=None):
    """C on real images: who it is (a contrastive loss on the embedding, optionally a
    softmax over the training people) and the 40 attributes, the key ones weighted up
    (they are what anonymized faces must show, and small: glasses, a mustache).

    With loss.classifier_damage or loss.classifier_recolour > 0 (and an rng), a second
    copy of the batch joins the contrastive loss as more photos of the same people; that
    share of it gets a damaged face centre (augment.damage_patch), or new colours
    (augment.recolour). C must then know people by outline, hair and pose, not by
    blotches over the eyes and mouth or by tint, as the attacker does.
    """
    w = config.loss
    x, y = batch["image"], batch["identity"]
    c = apply(networks["classifier"], c_params, x)
    attributes = batch["attributes"].astype(jnp.float32)
    key_index = jnp.asarray(attr_lib.attribute_indices(config.model.key_attributes))
    c_identity = losses.identity_cross_entropy(c.identity_logits, y)
    embeddings, labels = c.embedding, y
    damage = w.get("classifier_damage", 0.0)
    recolour = w.get("classifier_recolour", 0.0)
    if (damage > 0 or recolour > 0) and rng is not None:
        colour_rng, damage_rng = jax.random.split(rng)
        copy = augment.recolour(colour_rng, x, recolour) if recolour > 0 else x
        copy = augment.damage_patch(damage_rng, copy, damage) if damage > 0 else copy
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
        w.classifier_identity * c_identity
        + w.classifier_contrastive * c_contrastive
        + c_attributes
        + w.classifier_key_attributes * c_key_attributes
    )
    key_hits = (c.attribute_logits[:, key_index] > 0) == (attributes[:, key_index] > 0.5)
    metrics = dict(
        c_identity=c_identity,
        c_contrastive=c_contrastive,
        c_attributes=c_attributes,
        c_key_attributes=c_key_attributes,
        c_train_identity_accuracy=jnp.mean(jnp.argmax(c.identity_logits, -1) == y),
        c_train_key_attribute_accuracy=jnp.mean(key_hits),
    )
    return total, (metrics, c.embedding)


def generator_batch_size(config: ml_collections.ConfigDict) -> int:
    """Images per step that G and D train on (train.generator_batch_size; None: all)."""
    total = config.train.global_batch_size
    size = config.train.get("generator_batch_size")
    if size is None:
        return total
    if not 1 <= size <= total or total % size:
        raise ValueError(
            f"train.generator_batch_size ({size}) must divide train.global_batch_size "
            f"({total}): G trains on every ({total}/{size})-th image of each batch"
        )
    return size


def generator_share(tree, config):
    """What G and D train on: every m-th image of the batch, m = global_batch_size /
    generator_batch_size. C's real-image losses see the whole batch: a recogniser learns
    from many people per step (C identified 0.56 of unseen people with 64, 0.29 with
    16), and C costs a fraction of G. With m = data.photos_per_person_in_batch, G's share
    holds one photo of each person."""
    step = config.train.global_batch_size // generator_batch_size(config)
    return tree if step == 1 else jax.tree.map(lambda v: v[::step], tree)


def discriminator_classifier_loss(dc_params, networks, batch, fakes, config, rng=None):
    """D: LSGAN real vs the three fakes. C: `classifier_loss` on real images, plus
    linking x_A and x_W back to the original's embedding (an adversary to G)."""
    g_batch = generator_share(batch, config)
    n = g_batch["image"].shape[0]
    real_scores = apply(networks["discriminator"], dc_params["discriminator"], g_batch["image"])
    fake_scores = apply(networks["discriminator"], dc_params["discriminator"], fakes)
    d_loss = losses.lsgan_discriminator(real_scores, fake_scores)
    c_real, (metrics, f_x) = classifier_loss(dc_params["classifier"], networks, batch, config, rng)
    # C re-identifies x_A and x_W (fakes are [x_A, x_R, x_W]); x_R is left to D.
    anonymized, wrong = fakes[:n], fakes[2 * n :]
    c = apply(networks["classifier"], dc_params["classifier"], jnp.concatenate([anonymized, wrong]))
    f_a, f_w = jnp.split(c.embedding, 2)
    f_x = jax.lax.stop_gradient(generator_share(f_x, config))
    c_adversarial = losses.mismatch(f_a, f_x) + losses.mismatch(f_w, f_x)
    c_loss = c_real + config.loss.classifier_adversarial * c_adversarial
    metrics = dict(metrics, d_total=d_loss, c_adversarial=c_adversarial, c_total=c_loss)
    return d_loss + c_loss, metrics


def club_loss(club_params, networks, f_x, f_a):
    """q fits log q(f(x_A) | f(x)) on detached embeddings (CLUB's variational step)."""
    mean, log_var = apply(networks["club"], club_params, f_x, f_x.shape[-1])
    return -jnp.mean(losses.gaussian_log_likelihood(mean, log_var, f_a))


def _update(optimizer, params, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def train_step(state: TrainState, batch: dict, *, networks, optimizers, config, base_rng):
    """One step of every network; returns the new state and scalar metrics."""
    rng = jax.random.fold_in(base_rng, state.step)
    g_batch = generator_share(batch, config)
    key = sample_keys(rng, g_batch["image"].shape[0], config)
    params, opt_state = dict(state.params), dict(state.opt_state)

    gen_params = {k: params[k] for k in GENERATOR_NETWORKS}
    frozen = {k: v for k, v in params.items() if k not in GENERATOR_NETWORKS}
    (g_total, aux), g_grads = jax.value_and_grad(generator_loss, has_aux=True)(
        gen_params, frozen, networks, g_batch, key, state.step, config, jax.random.fold_in(rng, 2)
    )
    for name in GENERATOR_NETWORKS:
        params[name], opt_state[name] = _update(
            optimizers[name], params[name], opt_state[name], g_grads[name]
        )

    dc_params = {k: params[k] for k in ("discriminator", "classifier")}
    (_, dc_metrics), dc_grads = jax.value_and_grad(discriminator_classifier_loss, has_aux=True)(
        dc_params, networks, batch, aux["fakes"], config, jax.random.fold_in(rng, 1)
    )
    for name in ("discriminator", "classifier"):
        params[name], opt_state[name] = _update(
            optimizers[name], params[name], opt_state[name], dc_grads[name]
        )

    q_loss, q_grads = jax.value_and_grad(club_loss)(
        params["club"], networks, aux["f_x"], aux["f_a"]
    )
    params["club"], opt_state["club"] = _update(
        optimizers["club"], params["club"], opt_state["club"], q_grads
    )

    metrics = {f"loss/{k}": v for k, v in aux["terms"].items()}
    metrics.update({f"loss/{k}": v for k, v in dc_metrics.items()})
    metrics["loss/g_total"] = g_total
    metrics["loss/club_fit"] = q_loss
    metrics["loss/d_total"] = dc_metrics["d_total"]
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=update_ema(state.ema_params, params, state.step, config),
    )
    return new_state, metrics


def update_ema(ema_params: dict, params: dict, step, config) -> dict:
    """E's and G's moving averages after a full step (a no-op when none are kept).

    The decay ramps up as (1 + n) / (10 + n) over the first n full steps, so the average
    forgets the initialisation quickly, then holds at `train.ema_decay`.
    """
    if not ema_params:
        return ema_params
    full_steps = jnp.maximum(step - config.train.classifier_warmup_steps, 0).astype(jnp.float32)
    decay = jnp.minimum(config.train.ema_decay, (1.0 + full_steps) / (10.0 + full_steps))
    return {
        name: jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params[name])
        for name, ema in ema_params.items()
    }


def classifier_warmup_step(
    state: TrainState, batch: dict, *, networks, optimizers, config, base_rng=None
):
    """A step of C alone on real images: the first `train.classifier_warmup_steps`.

    The generator's identity and attribute terms follow C's gradients; from a random C
    they point nowhere. C's real-image loss does not depend on G, and a C step costs
    ~1/20 of a full step, so C learns first and G starts against a real recogniser.
    """
    params, opt_state = dict(state.params), dict(state.opt_state)
    rng = None if base_rng is None else jax.random.fold_in(base_rng, state.step)
    (c_total, (metrics, _)), grads = jax.value_and_grad(classifier_loss, has_aux=True)(
        params["classifier"], networks, batch, config, rng
    )
    params["classifier"], opt_state["classifier"] = _update(
        optimizers["classifier"], params["classifier"], opt_state["classifier"], grads
    )
    metrics = {f"loss/{k}": v for k, v in metrics.items()}
    metrics["loss/c_total"] = c_total
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def make_classifier_warmup_step(networks, optimizers, config, base_rng=None):
    return functools.partial(
        classifier_warmup_step,
        networks=networks,
        optimizers=optimizers,
        config=config,
        base_rng=base_rng,
    )


def make_train_step(networks, optimizers, config, base_rng):
    """train_step with everything but (state, batch) bound, ready for jax.jit."""
    return functools.partial(
        train_step, networks=networks, optimizers=optimizers, config=config, base_rng=base_rng
    )
