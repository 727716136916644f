"""Every loss term as a named pure function (METHOD.md section 4).

Images are in [-1, 1]. Scalars are means over the batch (and pixels), so they do not
depend on how the batch is split over devices.
"""

import jax
import jax.numpy as jnp
import optax


def lsgan_generator(fake_scores: list[jax.Array]) -> jax.Array:
    """Least-squares GAN, generator side: fakes should score 1 (real) at every scale."""
    return jnp.mean(jnp.stack([jnp.mean((s - 1.0) ** 2) for s in fake_scores]))


def lsgan_discriminator(real_scores: list[jax.Array], fake_scores: list[jax.Array]) -> jax.Array:
    """Least-squares GAN, discriminator side: real -> 1, fake -> 0, averaged over scales."""
    terms = [jnp.mean((r - 1.0) ** 2) + jnp.mean(f**2) for r, f in zip(real_scores, fake_scores)]
    return jnp.mean(jnp.stack(terms))


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean absolute error: the negative log-likelihood of a Laplace decoder, so
    minimising it on the recovery maximises a Barber-Agakov bound on I(x; x_R)."""
    return jnp.mean(jnp.abs(a - b))


def per_image_l1(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(a - b), axis=tuple(range(1, a.ndim)))


def distance_margin(a: jax.Array, b: jax.Array, margin: float) -> jax.Array:
    """Hinge that pushes images at least `margin` apart (mean |a - b| per image), and no
    further: a wrong-key recovery must not be the original, nor need it be noise."""
    return jnp.mean(jax.nn.relu(margin - per_image_l1(a, b)))


def closeness_margin(a: jax.Array, b: jax.Array, margin: float) -> jax.Array:
    """Hinge that keeps images within `margin` (mean |a - b| per image): background and
    pose stay, while the face inside is free to change."""
    return jnp.mean(jax.nn.relu(per_image_l1(a, b) - margin))


def attribute_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Binary cross-entropy of attribute logits against 0/1 targets (multi-label)."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))


def _unit_rows(x: jax.Array) -> jax.Array:
    return x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)


def _row_cosines(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(_unit_rows(a) * _unit_rows(b), axis=-1)


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean cosine similarity of two batches of embeddings (rows need not be unit)."""
    return jnp.mean(_row_cosines(a, b))


def dissimilarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean of (1 + cos) / 2 over rows, in [0, 1]: minimised, it drives cos(a, b) towards
    -1 (different people)."""
    return jnp.mean(0.5 * (1.0 + _row_cosines(a, b)))


def mismatch(a: jax.Array, b: jax.Array) -> jax.Array:
    """(1 - cos) / 2 in [0, 1]: minimised, it makes a the same person as b."""
    return 0.5 * (1.0 - cosine_similarity(a, b))


def supervised_contrastive(embeddings: jax.Array, labels: jax.Array, temperature: float):
    """Supervised contrastive loss (Khosla et al., 2020) over one batch of unit embeddings.

    Each row's other photos of the same person are its positives, everyone else's photos
    the negatives: it teaches "same person despite pose and light" from pairs, which
    carries over to people never seen, unlike a softmax over training people that a short
    run sees less than once each. Rows without a positive in the batch add nothing.
    """
    n = embeddings.shape[0]
    self_mask = jnp.eye(n, dtype=bool)
    logits = jnp.where(self_mask, -jnp.inf, embeddings @ embeddings.T / temperature)
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positive.sum(-1)
    per_row = -jnp.sum(jnp.where(positive, log_prob, 0.0), -1) / jnp.maximum(count, 1)
    has_positive = count > 0
    return jnp.sum(jnp.where(has_positive, per_row, 0.0)) / jnp.maximum(has_positive.sum(), 1)


def gaussian_log_likelihood(mean: jax.Array, log_var: jax.Array, y: jax.Array) -> jax.Array:
    """Per-row log q(y | x) of a diagonal Gaussian, up to the constant."""
    return jnp.sum(-0.5 * ((y - mean) ** 2 * jnp.exp(-log_var) + log_var), axis=-1)


def club_upper_bound(mean: jax.Array, log_var: jax.Array, y: jax.Array) -> jax.Array:
    """CLUB estimate of I(x; y): E[log q(y_i | x_i)] - E[log q(y_j | x_i)], negatives y_j
    taken from the other rows of the batch (Cheng et al., 2020)."""
    positive = gaussian_log_likelihood(mean, log_var, y)
    # All pairs (i, j): mean over j of log q(y_j | x_i), without the constant.
    diff = (y[None, :, :] - mean[:, None, :]) ** 2 * jnp.exp(-log_var)[:, None, :]
    negative = jnp.mean(jnp.sum(-0.5 * (diff + log_var[:, None, :]), axis=-1), axis=1)
    return jnp.mean(positive - negative)


def key_information(logits: jax.Array, key_vector: jax.Array) -> jax.Array:
    """BCE of the key predictor's bit logits against the password ({-0.5, 0.5} vector):
    minus a Barber-Agakov lower bound on I(password; output), up to H(password)."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, key_vector + 0.5))
