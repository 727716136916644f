"""Image and identity metrics for the evaluation report.

Images are float NHWC in [0, 1] (`psnr` takes a data_range for [-1, 1]); every image
metric returns one value per image. `psnr` and `ssim` reproduce scikit-image's
`peak_signal_noise_ratio(data_range=1)` and `structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)` (the tests hold
them to 1e-4), so our figures compare with published ones. They are jitted JAX, so the
evaluation can run them where the images already are (`psnr_numpy`: the same on the host).

Identity metrics work on embeddings (rows, any scale: they are L2-normalised here).
Verification follows face-recognition practice: a pair is "the same person" when its
cosine similarity exceeds a threshold chosen so that a given fraction (the false-accept
rate, FAR) of pairs of different people pass.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

# SSIM's Gaussian window as in Wang et al. 2004 and scikit-image: sigma 1.5, truncated at
# 3.5 sigma, i.e. 11 taps.
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_images(a, b) -> tuple[jax.Array, jax.Array]:
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"Expected two NHWC image batches of one shape, got {a.shape}, {b.shape}")
    return a, b


def _psnr(xp, a, b, data_range: float, max_db: float | None):
    """The PSNR formula, in jax.numpy (psnr) or numpy (psnr_numpy)."""
    mse = xp.mean(xp.square(a - b), axis=(1, 2, 3))
    if max_db is not None:  # the MSE that gives max_db: its floor
        mse = xp.maximum(mse, data_range**2 * 10.0 ** (-max_db / 10.0))
    return 10.0 * xp.log10(data_range**2 / mse)


@functools.partial(jax.jit, static_argnames=("data_range", "max_db"))
def _psnr_jax(a, b, data_range, max_db):
    return _psnr(jnp, a, b, data_range, max_db)


def psnr(a, b, *, data_range: float = 1.0, max_db: float | None = None) -> jax.Array:
    """Per-image PSNR in dB of images spanning `data_range` (1: [0, 1]; 2: [-1, 1]).

    Identical images give inf (as scikit-image), or about max_db when it is given (the
    MSE is floored at the value that gives max_db).
    """
    a, b = _check_images(a, b)
    return _psnr_jax(a, b, data_range=float(data_range), max_db=max_db)


def psnr_numpy(a, b, *, data_range: float = 1.0, max_db: float | None = None) -> np.ndarray:
    """`psnr` computed by numpy on the host (float32). Its float32 sums run in another
    order than XLA's, so the two differ in the last bits; heldout's figures use this."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"Expected two NHWC image batches of one shape, got {a.shape}, {b.shape}")
    with np.errstate(divide="ignore"):  # identical images without max_db: inf
        return _psnr(np, a, b, float(data_range), max_db)


def _gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian kernel: radius int(truncate * sigma + 0.5), sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _separable_filter(x: jax.Array, taps: np.ndarray) -> jax.Array:
    """Gaussian blur of every channel, 'valid' region only.

    scikit-image filters with reflected borders, then drops a border of the window's
    radius before averaging; the values it keeps never touch the padding, so a valid
    convolution gives exactly them. HIGHEST precision: accelerators would otherwise
    convolve in bfloat16.
    """
    channels = x.shape[-1]
    conv = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST,
    )
    k = len(taps)
    kernel = jnp.tile(jnp.asarray(taps)[:, None, None, None], (1, 1, 1, channels))
    x = conv(x, kernel)  # along H: kernel (k, 1)
    return conv(x, kernel.reshape(1, k, 1, channels))  # along W


@jax.jit
def _ssim(a, b):
    taps = _gaussian_taps()
    # One filter call for the five local moments: means, second moments, cross moment.
    moments = _separable_filter(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1), taps)
    ux, uy, uxx, uyy, uxy = jnp.split(moments, 5, axis=-1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy  # population covariances
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K * data_range)^2 with data_range 1
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    # scikit-image averages each channel's map, then the channels: all maps have one size.
    return jnp.mean(s, axis=(1, 2, 3))


def ssim(a, b) -> jax.Array:
    """Per-image mean SSIM (Gaussian window 11, sigma 1.5, data range 1, channel mean)."""
    a, b = _check_images(a, b)
    window = len(_gaussian_taps())
    if min(a.shape[1:3]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {a.shape[1:3]}")
    return _ssim(a, b)


def frechet_distance(features_a, features_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples).

    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)): FID's formula. It is FID
    only on InceptionV3 pool features; on the attacker's embeddings we call it
    `fd_attacker`.

    With no more samples than dimensions (FID on a few thousand images: 2,048 dims), the
    covariances are singular and scipy's sqrtm of their product is slow (15 s at 1,600
    images) and inexact (identical sets give -5e-5). There, with X_a, X_b the centred rows
    and S = X^T X / (n - 1), the eigenvalues of S_a S_b are the squared singular values of
    the n_a x n_b matrix X_a X_b^T / sqrt((n_a - 1)(n_b - 1)), so the trace term is its
    nuclear norm: exact, 0.6 s at 1,600, and identical sets give 0.
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Expected (N, D) feature sets of one D, got {a.shape}, {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError("Each feature set needs at least 2 rows for a covariance")
    mu_a, mu_b = a.mean(0), b.mean(0)
    diff = mu_a - mu_b
    if max(len(a), len(b)) <= a.shape[1]:
        xa, xb = a - mu_a, b - mu_b
        dof_a, dof_b = len(a) - 1, len(b) - 1
        cross = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt(dof_a * dof_b)
        traces = np.sum(xa * xa) / dof_a + np.sum(xb * xb) / dof_b
        return float(diff @ diff + traces - 2.0 * cross)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(covmean)):
        # A singular product: nudge both diagonals, as the reference FID code does.
        offset = np.eye(a.shape[1]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)  # Round-off leaves tiny imaginary parts.
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


# KID computes the kernel between whole sets once when neither has more rows than this
# (three float64 matrices of at most 128 MB) and indexes the subsets out of it: 40x faster
# at 1,600 rows. Larger sets compute each subset's kernels on their own.
KID_FULL_KERNEL_MAX_ROWS = 4096


def _cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's polynomial kernel (x.y / d + 1)^3 between the rows of x and of y."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 of two samples of m rows from their kernel matrices: the
    within-set means leave out the diagonal k(x, x)."""
    m = len(k_xx)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kernel_inception_distance(
    features_a, features_b, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> dict:
    """KID (Binkowski et al. 2018): {"mean", "std"} of the unbiased MMD^2 over subsets.

    Unlike FID it has no bias from the sample size (two samples of one distribution give
    ~0, either sign), so figures at different set sizes compare. Each subset draws
    `subset_size` rows (clipped to the smaller set) without replacement from each set,
    with a seeded generator; "std" is the spread over subsets (not a standard error).
    Polynomial kernel (x.y / d + 1)^3 on (N, D) features, float64.
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Expected (N, D) feature sets of one D, got {a.shape}, {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2 or num_subsets < 1:
        raise ValueError(f"KID needs 2 rows per set and 1 subset, got {m} and {num_subsets}")
    if max(len(a), len(b)) <= KID_FULL_KERNEL_MAX_ROWS:
        k_aa, k_bb, k_ab = _cubic_kernel(a, a), _cubic_kernel(b, b), _cubic_kernel(a, b)
        kernels = lambda i, j: (k_aa[np.ix_(i, i)], k_bb[np.ix_(j, j)], k_ab[np.ix_(i, j)])
    else:
        kernels = lambda i, j: (
            _cubic_kernel(a[i], a[i]),
            _cubic_kernel(b[j], b[j]),
            _cubic_kernel(a[i], b[j]),
        )
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        rows_a = rng.choice(len(a), m, replace=False)
        rows_b = rng.choice(len(b), m, replace=False)
        values.append(_unbiased_mmd2(*kernels(rows_a, rows_b)))
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def _unit(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_similarity(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) embedding sets."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"Expected two (N, D) embedding sets of one shape: {a.shape}, {b.shape}")
    return np.sum(_unit(a) * _unit(b), axis=-1)


def cosine_similarity_matrix(a, b) -> np.ndarray:
    """(N, M) cosine similarity of every row of `a` with every row of `b`."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"Expected (N, D) and (M, D) embedding sets: {a.shape}, {b.shape}")
    return _unit(a) @ _unit(b).T


def identity_match_rate(probes, references, threshold: float) -> float:
    """Share of probes that verify as their reference's person (cosine > threshold).

    Row i of `probes` is compared with row i of `references` only (e.g. an anonymized
    face against another photo of its original person).
    """
    return float(np.mean(cosine_similarity(probes, references) > threshold))


def mean_identity_distance(a, b) -> float:
    """Mean of 1 - cosine similarity between rows: 0 same direction, 2 opposite."""
    return float(np.mean(1.0 - cosine_similarity(a, b)))


def verification_pairs(
    embeddings, identities, *, max_negative_pairs: int = 20_000_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of (same-person pairs, different-person pairs) within a set.

    Every unordered pair of distinct rows counts once. When there are more than
    `max_negative_pairs` different-person pairs (CelebA-sized sets), a seeded uniform
    sample of that many stands in for them, so memory stays bounded.
    """
    e = _unit(embeddings).astype(np.float32)
    ids = np.asarray(identities).reshape(-1)
    if len(e) != len(ids):
        raise ValueError(f"{len(e)} embeddings but {len(ids)} identities")
    n = len(ids)
    num_pairs = n * (n - 1) // 2
    if num_pairs <= max_negative_pairs:
        rows, cols = np.triu_indices(n, 1)
        scores = (e @ e.T)[rows, cols]
        same = ids[rows] == ids[cols]
        return scores[same], scores[~same]
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, 2 * max_negative_pairs)
    cols = rng.integers(0, n, 2 * max_negative_pairs)
    different = ids[rows] != ids[cols]
    rows, cols = rows[different][:max_negative_pairs], cols[different][:max_negative_pairs]
    negatives = np.einsum("pd,pd->p", e[rows], e[cols])
    positives = []
    for person in np.unique(ids):
        members = e[ids == person]
        if len(members) > 1:
            positives.append((members @ members.T)[np.triu_indices(len(members), 1)])
    positives = np.concatenate(positives) if positives else np.zeros(0, np.float32)
    return positives, negatives


def gallery_templates(embeddings, owners) -> np.ndarray:
    """(G, D) unit mean embedding of each owner's rows (owners: (N,) ints 0..G-1, each used):
    one template per person from all the reference photos an attacker holds of them."""
    e = _unit(embeddings)
    owners = np.asarray(owners).reshape(-1)
    if len(e) != len(owners):
        raise ValueError(f"{len(e)} embeddings but {len(owners)} owners")
    count = int(owners.max()) + 1 if len(owners) else 0
    sums = np.zeros((count, e.shape[-1]), np.float64)
    np.add.at(sums, owners, e)
    if (np.bincount(owners, minlength=count) == 0).any():
        raise ValueError("Every owner 0..G-1 needs at least one embedding")
    return _unit(sums)


def gallery_verification_pairs(embeddings, identities, gallery_photos: int):
    """Cosine scores of (same-person, different-person) probe-vs-gallery pairs in a set.

    Per person (in identity order), the first `gallery_photos` rows form the gallery
    template (gallery_templates) and every further row is a probe; each probe is scored
    against its own person's template and against every other person's. People with no
    photo beyond the gallery give a template but no probe.
    """
    ids = np.asarray(identities).reshape(-1)
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(ids)} identities")
    if gallery_photos < 1:
        raise ValueError(f"gallery_photos must be at least 1, got {gallery_photos}")
    order = np.argsort(ids, kind="stable")
    people, starts = np.unique(ids[order], return_index=True)
    gallery_rows, gallery_owner, probe_rows, probe_owner = [], [], [], []
    for person, group in enumerate(np.split(order, starts[1:])):
        gallery_rows.extend(group[:gallery_photos])
        gallery_owner.extend([person] * len(group[:gallery_photos]))
        probe_rows.extend(group[gallery_photos:])
        probe_owner.extend([person] * len(group[gallery_photos:]))
    if not probe_rows or len(people) < 2:
        raise ValueError(
            f"Need 2 people and one with more than gallery_photos ({gallery_photos}) photos"
        )
    templates = gallery_templates(np.asarray(embeddings)[gallery_rows], gallery_owner)
    scores = cosine_similarity_matrix(np.asarray(embeddings)[probe_rows], templates)
    same = np.asarray(probe_owner)[:, None] == np.arange(len(people))[None, :]
    return scores[same], scores[~same]


def threshold_at_far(negative_scores, far: float = 0.01) -> float:
    """The lowest threshold at which at most `far` of different-person pairs pass.

    Pairs pass when score > threshold. With n negatives, floor(far * n) may pass: the
    threshold is the (floor(far * n) + 1)-th highest negative score.
    """
    negatives = np.sort(np.asarray(negative_scores, np.float64).reshape(-1))[::-1]
    if len(negatives) == 0:
        raise ValueError("No different-person pairs to set a threshold on")
    if not 0.0 <= far < 1.0:
        raise ValueError(f"far must be in [0, 1), got {far}")
    return float(negatives[int(np.floor(far * len(negatives)))])


def verification_rates(positive_scores, negative_scores, threshold: float) -> dict:
    """{"tar": share of same-person pairs that pass, "far": share of different-person ones}."""
    return {
        "tar": float(np.mean(np.asarray(positive_scores) > threshold)),
        "far": float(np.mean(np.asarray(negative_scores) > threshold)),
    }
