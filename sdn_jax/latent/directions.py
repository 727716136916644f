"""Attribute directions in a latent space, degrees, and edits (pure, jit-able, batched).

Three ways to find a direction (METHOD.md section 7):
- probe (InterFaceGAN): a linear probe on latents with the attribute's labels; here the
  ridge least-squares classifier (centred latents, +-1 targets), i.e. the regularised
  Fisher/LDA direction that a linear SVM approximates, in closed form;
- SeFa: the top eigenvectors of A^T A for the first layer A that reads the latent (the
  directions it amplifies most), without labels;
- PCA (GANSpace): the principal axes of the latents, without labels.
The unsupervised components are matched to attributes afterwards (match_components).

A degree is one standard deviation of the latents' projections on the unit direction:
+-1 and +-2 then mean the same size of step for every attribute, method and space.
"""

import jax
import jax.numpy as jnp


def unit(v: jax.Array, axis: int = -1) -> jax.Array:
    return v / jnp.maximum(jnp.linalg.norm(v, axis=axis, keepdims=True), 1e-12)


def probe_direction(latents: jax.Array, labels: jax.Array, ridge: float = 1e-2) -> jax.Array:
    """Unit direction of the ridge least-squares probe: (N, D) latents, (N,) bool labels.
    Points towards the attribute (label True). `ridge` is relative to the mean variance."""
    x = latents - latents.mean(axis=0)
    y = jnp.where(labels, 1.0, -1.0)
    y = y - y.mean()
    covariance = x.T @ x / x.shape[0]
    scale = jnp.trace(covariance) / x.shape[1]
    w = jnp.linalg.solve(covariance + ridge * scale * jnp.eye(x.shape[1]), x.T @ y / x.shape[0])
    return unit(w)


def probe_directions(latents: jax.Array, labels: jax.Array, ridge: float = 1e-2) -> jax.Array:
    """(A, D) unit directions for (N, A) labels (one probe per column)."""
    return jax.vmap(lambda y: probe_direction(latents, y, ridge), out_axes=0)(labels.T)


def sefa_directions(weight: jax.Array, k: int) -> jax.Array:
    """(k, D) top eigenvectors of W W^T for a (D, out) weight read as latent @ W: the unit
    latent moves that change the layer's output most (SeFa). Signs are arbitrary."""
    _, vectors = jnp.linalg.eigh(weight @ weight.T)  # ascending eigenvalues
    return vectors[:, ::-1][:, :k].T


def pca_directions(latents: jax.Array, k: int) -> jax.Array:
    """(k, D) principal axes of (N, D) latents, largest variance first (GANSpace)."""
    x = latents - latents.mean(axis=0)
    _, _, vt = jnp.linalg.svd(x, full_matrices=False)
    return vt[:k]


def degree_size(latents: jax.Array, direction: jax.Array) -> jax.Array:
    """One degree along `direction`: the std of the latents' projections on its unit vector."""
    return jnp.std(latents @ unit(direction))


def edit(latent: jax.Array, direction: jax.Array, degrees, size=1.0) -> jax.Array:
    """latent + degrees * size * unit(direction); degrees a scalar or (B,) per row."""
    degrees = jnp.asarray(degrees, latent.dtype)
    step = (degrees[..., None] if degrees.ndim else degrees) * size
    return latent + step * unit(direction)


def conditional_direction(direction: jax.Array, others: jax.Array) -> jax.Array:
    """`direction` with the span of `others` (M, D) projected out (InterFaceGAN's
    conditional manipulation: moving along it leaves the other probes' scores unchanged)."""
    if others.shape[0] == 0:
        return unit(direction)
    q, _ = jnp.linalg.qr(others.T)  # (D, M) orthonormal basis of the others
    return unit(direction - q @ (q.T @ direction))


def match_components(components: jax.Array, probes: jax.Array) -> tuple:
    """For each probe direction (A, D), the component (K, D) with the largest |cosine|,
    signed to point the probe's way: (index (A,), signed unit direction (A, D), cosine (A,))."""
    cosine = unit(probes) @ unit(components).T  # (A, K)
    index = jnp.argmax(jnp.abs(cosine), axis=1)
    best = jnp.take_along_axis(cosine, index[:, None], axis=1)[:, 0]
    signed = unit(components)[index] * jnp.sign(best)[:, None]
    return index, signed, jnp.abs(best)
