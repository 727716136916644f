"""Metrics: PSNR/SSIM against scikit-image, Frechet distance, verification logic."""

import numpy as np
import pytest
from skimage import data as skimage_data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from sdn_jax.data import synth as synth_faces
from sdn_jax.evaluation import metrics

TOLERANCE = 1e-4


def skimage_ssim(a, b):
    return structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        channel_axis=-1,
    )


def image_pairs():
    """(name, a, b) batches: noise, a real photo and synthetic faces under common edits."""
    rng = np.random.default_rng(0)
    noise = rng.random((3, 24, 37, 3))  # odd, non-square: the valid-region cropping shows
    yield "noise", noise, rng.random(noise.shape)
    yield "noise_perturbed", noise, np.clip(noise + 0.05 * rng.standard_normal(noise.shape), 0, 1)
    photo = skimage_data.astronaut()[::4, ::4][None] / 255.0  # 128x128 real portrait
    faces = synth_faces.render_faces([0, 1, 2, 3], [0, 0, 1, 5], 64)[0] / 255.0
    for name, x in (("astronaut", photo), ("faces", faces)):
        yield f"{name}_gain", x, np.clip(x * [1.2, 0.8, 0.9], 0, 1)
        yield f"{name}_shift", x, np.roll(x, 2, axis=2)
        yield f"{name}_blur", x, (x + np.roll(x, 1, 1) + np.roll(x, 1, 2)) / 3
        yield f"{name}_noise", x, np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
        yield f"{name}_other", x, x[:, ::-1]  # upside down: barely related


@pytest.mark.parametrize("a,b", [pytest.param(a, b, id=name) for name, a, b in image_pairs()])
def test_psnr_and_ssim_match_scikit_image(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    expected_psnr = [peak_signal_noise_ratio(x, y, data_range=1) for x, y in zip(a, b)]
    expected_ssim = [skimage_ssim(x, y) for x, y in zip(a, b)]
    np.testing.assert_allclose(np.asarray(metrics.psnr(a, b)), expected_psnr, atol=TOLERANCE)
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, b)), expected_ssim, atol=TOLERANCE)


def test_identical_images():
    x = np.random.default_rng(1).random((2, 16, 16, 3))
    assert np.all(np.isinf(np.asarray(metrics.psnr(x, x))))
    np.testing.assert_allclose(np.asarray(metrics.ssim(x, x)), 1.0, atol=1e-6)


def test_psnr_data_range_floor_and_numpy_flavour():
    rng = np.random.default_rng(2)
    a = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    b = np.clip(a + 0.05 * rng.standard_normal(a.shape), -1, 1).astype(np.float32)
    b[0] = a[0]
    wide = np.asarray(metrics.psnr(a, b, data_range=2.0))  # [-1, 1] images
    assert np.isinf(wide[0])
    np.testing.assert_allclose(wide[1:], np.asarray(metrics.psnr((a + 1) / 2, (b + 1) / 2))[1:],
                               rtol=1e-5)  # fmt: skip
    floored = metrics.psnr_numpy(a, b, data_range=2.0, max_db=100.0)
    assert isinstance(floored, np.ndarray) and floored.dtype == np.float32
    np.testing.assert_allclose(floored, [100.0, *wide[1:]], rtol=1e-6)
    floored_jax = metrics.psnr(a, b, data_range=2.0, max_db=100.0)
    np.testing.assert_allclose(np.asarray(floored_jax), floored, rtol=1e-6)
    assert np.all(np.isinf(metrics.psnr_numpy(a, a)))
    with pytest.raises(ValueError, match="NHWC"):
        metrics.psnr_numpy(a, a[:1])


def test_image_metrics_reject_bad_shapes():
    x = np.zeros((2, 16, 16, 3))
    with pytest.raises(ValueError, match="NHWC"):
        metrics.psnr(x, x[:1])
    with pytest.raises(ValueError, match="NHWC"):
        metrics.ssim(x[0], x[0])
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(x[:, :8], x[:, :8])


def direct_frechet(a, b):
    """The same distance by another route: tr((S_a^1/2 S_b S_a^1/2)^1/2) from eigh."""

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = psd_sqrt(cov_a)
    cross = np.trace(psd_sqrt(root_a @ cov_b @ root_a))
    diff = a.mean(0) - b.mean(0)
    return diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * cross


def test_frechet_distance_matches_direct_formula():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 0.5
    fd = metrics.frechet_distance(a, b)
    assert fd > 1.0
    np.testing.assert_allclose(fd, direct_frechet(a, b), rtol=1e-6)
    # Diagonal covariances: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2, in closed form.
    x = rng.standard_normal((1000, 3))
    x = (x - x.mean(0)) / x.std(0, ddof=1)
    y = x * [1.0, 2.0, 3.0] + [1.0, 0.0, 0.0]
    np.testing.assert_allclose(metrics.frechet_distance(x, y), 1.0 + 0 + 1 + 4, rtol=1e-3)


def test_frechet_distance_is_zero_for_identical_sets():
    a = np.random.default_rng(3).standard_normal((200, 16))
    assert abs(metrics.frechet_distance(a, a)) < 1e-6
    # A pure translation only adds |shift|^2.
    np.testing.assert_allclose(metrics.frechet_distance(a, a + 0.5), 16 * 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="one D"):
        metrics.frechet_distance(a, a[:, :3])


def unit_vectors_at(cosines):
    """References e_0 and probes at the given cosines to them, in 2-D."""
    angles = np.arccos(np.asarray(cosines))
    probes = np.stack([np.cos(angles), np.sin(angles)], 1)
    return probes, np.tile([[1.0, 0.0]], (len(cosines), 1))


def test_identity_match_rate_and_distance_on_hand_made_embeddings():
    probes, references = unit_vectors_at([0.95, 0.7, 0.5, -0.2])
    assert metrics.identity_match_rate(probes, references, 0.6) == 0.5
    assert metrics.identity_match_rate(probes, references, -0.5) == 1.0
    assert metrics.identity_match_rate(probes, references, 0.96) == 0.0
    # Scale does not matter (rows are normalised), and the comparison is row by row.
    assert metrics.identity_match_rate(3 * probes, 0.1 * references, 0.6) == 0.5
    assert metrics.identity_match_rate(probes[::-1], references, 0.6) == 0.5
    distance = metrics.mean_identity_distance(probes, references)
    np.testing.assert_allclose(distance, np.mean(1 - np.array([0.95, 0.7, 0.5, -0.2])))


def test_gallery_templates_average_each_owners_unit_embeddings():
    e = np.array([[2.0, 0.0], [0.0, 5.0], [0.0, -1.0], [3.0, 3.0]])
    templates = metrics.gallery_templates(e, [0, 0, 1, 1])
    # Owner 0: the mean of (1, 0) and (0, 1), scale ignored; owner 1: (0, -1) and the unit
    # diagonal, then normalised.
    np.testing.assert_allclose(templates[0], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)
    mean = np.array([np.sqrt(0.5), np.sqrt(0.5) - 1.0]) / 2
    np.testing.assert_allclose(templates[1], mean / np.linalg.norm(mean), atol=1e-12)
    np.testing.assert_allclose(metrics.cosine_similarity_matrix(e, templates)[:, 0],
                               [np.sqrt(0.5), np.sqrt(0.5), -np.sqrt(0.5), 1.0])  # fmt: skip
    with pytest.raises(ValueError, match="at least one embedding"):
        metrics.gallery_templates(e, [0, 0, 2, 2])  # owner 1 has none
    with pytest.raises(ValueError, match="4 embeddings but 3 owners"):
        metrics.gallery_templates(e, [0, 0, 1])


def test_gallery_verification_pairs_score_probes_against_every_gallery():
    # Person 7: gallery (1, 0), probes at 0 and 90 degrees; person 3: gallery (0, 1) and
    # one probe at 180 degrees; person 9: a gallery only (no photo beyond it).
    e = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])
    ids = np.array([3, 7, 7, 7, 3, 9])
    positives, negatives = metrics.gallery_verification_pairs(e, ids, gallery_photos=1)
    # People in identity order 3, 7, 9. Probes: person 3's (0, -1); person 7's (1, 0), (0, 1).
    np.testing.assert_allclose(sorted(positives), [-1.0, 0.0, 1.0])
    # Each probe against the 2 other people's galleries: 3 probes x 2.
    np.testing.assert_allclose(sorted(negatives), [-1.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="more than gallery_photos"):
        metrics.gallery_verification_pairs(e, ids, gallery_photos=3)


def test_threshold_at_far_lets_through_the_allowed_share():
    negatives = np.random.default_rng(4).permutation(np.linspace(-1, 1, 1000))
    threshold = metrics.threshold_at_far(negatives, 0.01)
    assert np.sum(negatives > threshold) == 10  # floor(0.01 * 1000)
    assert np.sum(negatives > np.nextafter(threshold, -2)) == 11  # and it is the lowest
    assert metrics.threshold_at_far(negatives, 0.0) == negatives.max()  # nothing passes
    rates = metrics.verification_rates([0.99, 0.98, threshold, -1.0], negatives, threshold)
    assert rates == {"tar": 0.5, "far": 0.01}  # a score equal to the threshold fails


def test_verification_pairs_splits_same_and_different_people():
    # Three people with two photos each; person 2's photos point opposite ways.
    embeddings = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 1], [-1, -1]], float)
    identities = np.array([0, 0, 1, 1, 2, 2])
    positives, negatives = metrics.verification_pairs(embeddings, identities)
    assert len(positives) == 3 and len(negatives) == 15 - 3
    np.testing.assert_allclose(np.sort(positives)[0], -1.0)
    threshold = metrics.threshold_at_far(negatives, 0.0)  # the best impostor: cos 45 deg
    np.testing.assert_allclose(threshold, np.cos(np.arctan(0.1) - np.pi / 4), rtol=1e-6)
    assert metrics.verification_rates(positives, negatives, threshold)["tar"] == 2 / 3
    # Sampled negatives (big sets): only different-person pairs, the same positives.
    sampled_pos, sampled_neg = metrics.verification_pairs(
        embeddings, identities, max_negative_pairs=5
    )
    assert len(sampled_neg) == 5
    assert set(np.round(sampled_neg, 6)) <= set(np.round(negatives, 6))
    np.testing.assert_allclose(np.sort(sampled_pos), np.sort(positives))
