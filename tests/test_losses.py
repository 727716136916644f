"""Every loss term against values worked out by hand or with plain numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdn_jax import losses


def f32(x):
    return jnp.asarray(x, jnp.float32)


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def test_lsgan_generator_averages_scales():
    # Scale 0: (s - 1)^2 = 0, 1, 1, 0 -> mean 0.5. Scale 1: (3 - 1)^2 = 4. Mean of scales 2.25.
    scores = [f32([[1.0, 0.0], [2.0, 1.0]]), f32([[3.0]])]
    assert float(losses.lsgan_generator(scores)) == pytest.approx(2.25)
    assert float(losses.lsgan_generator([f32(np.ones((2, 3, 3)))] * 2)) == 0.0


def test_lsgan_discriminator_real_to_one_fake_to_zero():
    real = [f32([1.0, 0.0]), f32([[2.0]])]  # (0 + 1) / 2 = 0.5 ; (2 - 1)^2 = 1
    fake = [f32([0.0, 2.0]), f32([[-1.0]])]  # (0 + 4) / 2 = 2 ; 1
    # Scale 0: 0.5 + 2 = 2.5; scale 1: 1 + 1 = 2; mean 2.25.
    assert float(losses.lsgan_discriminator(real, fake)) == pytest.approx(2.25)
    perfect = losses.lsgan_discriminator([f32(np.ones((2, 4)))], [f32(np.zeros((2, 4)))])
    assert float(perfect) == 0.0
    # Swapping real and fake is the worst case: every score is 1 away from its target.
    swapped = losses.lsgan_discriminator([f32(np.zeros((2, 4)))], [f32(np.ones((2, 4)))])
    assert float(swapped) == pytest.approx(2.0)


def test_l1_and_per_image_l1():
    a = f32(np.zeros((2, 2, 2, 1)))
    b = f32(np.stack([np.full((2, 2, 1), 0.2), np.array([[[1.0], [-1.0]], [[0.0], [2.0]]])]))
    np.testing.assert_allclose(losses.per_image_l1(a, b), [0.2, 1.0], rtol=1e-6)
    assert float(losses.l1(a, b)) == pytest.approx(0.6)
    assert float(losses.l1(b, b)) == 0.0


def _two_images(diffs):
    """Image pairs whose mean |a - b| per image are `diffs`."""
    a = np.zeros((len(diffs), 4, 4, 3), np.float32)
    b = a + np.asarray(diffs, np.float32)[:, None, None, None]
    return f32(a), f32(b)


def test_distance_margin_hinge_both_sides():
    a, b = _two_images([0.2, 1.0])  # margin 0.5: image 0 is 0.3 too close, image 1 is far
    assert float(losses.distance_margin(a, b, 0.5)) == pytest.approx(0.15, rel=1e-5)
    grad = jax.grad(lambda b: losses.distance_margin(a, b, 0.5))(b)
    assert np.all(np.asarray(grad[0]) < 0)  # pushed apart (b above a: b moves up)
    np.testing.assert_array_equal(grad[1], 0.0)  # beyond the margin: left alone
    far, farther = _two_images([0.6, 2.0])
    assert float(losses.distance_margin(far, farther, 0.5)) == 0.0


def test_closeness_margin_hinge_both_sides():
    a, b = _two_images([0.2, 1.0])  # margin 0.5: image 0 inside, image 1 0.5 too far
    assert float(losses.closeness_margin(a, b, 0.5)) == pytest.approx(0.25, rel=1e-5)
    grad = jax.grad(lambda b: losses.closeness_margin(a, b, 0.5))(b)
    np.testing.assert_array_equal(grad[0], 0.0)  # within the margin: free to change
    assert np.all(np.asarray(grad[1]) > 0)  # pulled back towards a
    near, nearer = _two_images([0.1, 0.5])
    assert float(losses.closeness_margin(near, nearer, 0.5)) == 0.0


def test_attribute_bce_matches_numpy():
    logits = np.array([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]], np.float32)
    targets = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]], np.float32)
    expected = -np.mean(targets * np_log_sigmoid(logits) + (1 - targets) * np_log_sigmoid(-logits))
    assert float(losses.attribute_bce(f32(logits), f32(targets))) == pytest.approx(
        expected, rel=1e-5
    )
    # Confident and right is ~0, confident and wrong is ~|logit|.
    assert float(losses.attribute_bce(f32([[20.0, -20.0]]), f32([[1.0, 0.0]]))) < 1e-6
    assert float(losses.attribute_bce(f32([[20.0]]), f32([[0.0]]))) == pytest.approx(20.0)


def test_cosine_similarity_and_dissimilarity():
    a = f32([[1.0, 2.0, 3.0], [0.0, -4.0, 0.5]])
    assert float(losses.cosine_similarity(a, a)) == pytest.approx(1.0, abs=1e-5)
    assert float(losses.cosine_similarity(a, -3.0 * a)) == pytest.approx(-1.0, abs=1e-5)
    assert float(losses.dissimilarity(a, 5.0 * a)) == pytest.approx(1.0, abs=1e-5)
    assert float(losses.dissimilarity(a, -a)) == pytest.approx(0.0, abs=1e-5)
    orthogonal = f32([[1.0, 0.0], [0.0, 2.0]]), f32([[0.0, 3.0], [-1.0, 0.0]])
    assert float(losses.dissimilarity(*orthogonal)) == pytest.approx(0.5, abs=1e-6)
    # A mean over rows of per-row cosines.
    x, y = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])
    assert float(losses.cosine_similarity(f32(x), f32(y))) == pytest.approx(
        (1.0 + 1 / np.sqrt(2)) / 2, abs=1e-5
    )


def test_gaussian_log_likelihood_matches_numpy():
    rng = np.random.default_rng(0)
    mean, y = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    log_var = rng.uniform(-3, 3, (5, 7))
    var = np.exp(log_var)
    # Full log N(y; mean, var) summed over dims, minus the constant D/2 log(2 pi).
    full = np.sum(-0.5 * (np.log(2 * np.pi) + log_var + (y - mean) ** 2 / var), axis=-1)
    expected = full + 0.5 * 7 * np.log(2 * np.pi)
    value = losses.gaussian_log_likelihood(f32(mean), f32(log_var), f32(y))
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


def np_club(mean, log_var, y):
    """mean_i [log q(y_i | x_i) - mean_j log q(y_j | x_i)] with plain loops."""
    n = len(y)

    def ll(i, j):
        return np.sum(-0.5 * ((y[j] - mean[i]) ** 2 / np.exp(log_var[i]) + log_var[i]))

    return np.mean([ll(i, i) - np.mean([ll(i, j) for j in range(n)]) for i in range(n)])


def test_club_upper_bound_matches_its_definition():
    rng = np.random.default_rng(1)
    mean, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    log_var = rng.uniform(-1, 1, (6, 4))
    value = losses.club_upper_bound(f32(mean), f32(log_var), f32(y))
    assert float(value) == pytest.approx(np_club(mean, log_var, y), rel=1e-4, abs=1e-5)


def test_club_upper_bound_dependent_vs_independent():
    rng = np.random.default_rng(2)
    n, d = 1000, 8
    x = rng.normal(size=(n, d)).astype(np.float32)
    log_var = f32(np.zeros((n, d)))
    # q's mean is x itself, unit variance. Dependent: y = x + 0.1 noise. Per row, the positive
    # term is -0.5 * D * 0.01 on average and the negative (j != i) -0.5 * D * 2.01, so the
    # bound is ~(1 - 1/n) * D.
    dependent = x + 0.1 * rng.normal(size=(n, d)).astype(np.float32)
    high = float(losses.club_upper_bound(f32(x), log_var, f32(dependent)))
    assert high == pytest.approx(d * (1 - 1 / n), rel=0.1)
    # Independent: zero in expectation (standard error ~0.13 at this batch size).
    independent = rng.normal(size=(n, d)).astype(np.float32)
    low = float(losses.club_upper_bound(f32(x), log_var, f32(independent)))
    assert abs(low) < 0.5, low


def test_key_information():
    password = f32([[0.5, 0.5, 0.5, -0.5], [-0.5, 0.5, 0.5, 0.5]])  # bits 1110, 0111
    perfect = 30.0 * jnp.sign(password)
    assert float(losses.key_information(perfect, password)) < 1e-6
    assert float(losses.key_information(-perfect, password)) == pytest.approx(30.0, rel=1e-5)
    # Knowing nothing costs log 2 per bit (the password's entropy).
    assert float(losses.key_information(jnp.zeros((2, 4)), password)) == pytest.approx(
        np.log(2.0), rel=1e-6
    )
    # In between: BCE against the bits (password + 0.5), as in numpy.
    logits = np.array([[2.0, -1.0, 0.5, 3.0], [-0.5, 1.5, -2.0, 0.0]], np.float32)
    bits = np.asarray(password) + 0.5
    expected = -np.mean(bits * np_log_sigmoid(logits) + (1 - bits) * np_log_sigmoid(-logits))
    assert float(losses.key_information(f32(logits), password)) == pytest.approx(expected, rel=1e-5)


def test_mismatch_is_zero_for_the_same_direction_and_one_for_opposite():
    a = f32([[1.0, 0.0], [0.0, 2.0]])
    assert float(losses.mismatch(a, 3.0 * a)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.mismatch(a, -a)) == pytest.approx(1.0, abs=1e-6)
    assert float(losses.mismatch(a, f32([[0.0, 1.0], [1.0, 0.0]]))) == pytest.approx(0.5)


def test_supervised_contrastive_matches_numpy_and_ignores_rows_without_positives():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 3))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 2])  # row 4 has no positive in the batch
    t = 0.5
    expected = []
    for i in range(4):
        others = [j for j in range(5) if j != i]
        log_denominator = np.logaddexp.reduce([emb[i] @ emb[j] / t for j in others])
        positives = [j for j in others if labels[j] == labels[i]]
        expected.append(-np.mean([emb[i] @ emb[j] / t - log_denominator for j in positives]))
    got = losses.supervised_contrastive(f32(emb), jnp.asarray(labels), t)
    assert float(got) == pytest.approx(np.mean(expected), rel=1e-5)
    # Pulling each pair together (and the pairs apart) lowers it.
    tidy = f32([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]])
    assert float(losses.supervised_contrastive(tidy, jnp.asarray(labels), t)) < float(got)
