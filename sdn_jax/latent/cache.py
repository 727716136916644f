"""Latents of a data split, computed once per run and checkpoint step.

`<workdir>/latent/latents_<split>_step<step>_n<count>.npz` holds, for `count` photos
spread evenly over the split (record order), each space's latent of the original photo under a
fixed random anonymizing key per photo, the encoder's vector z of the anonymized face,
the key's attribute choices and the photos' 40 attribute labels. A file whose step, count
or key seed differ is simply another file; a damaged one is recomputed.
"""

import os

import jax
import numpy as np

from sdn_jax import keys
from sdn_jax.atomic_files import written_atomically
from sdn_jax.batching import map_in_batches
from sdn_jax.images import from_uint8
from sdn_jax.latent import spaces
from sdn_jax.models.sdn import apply

KEY_SEED = 2468  # the photos' keys: fixed, so runs and steps compare


def photo_keys(count: int, model_settings) -> tuple[np.ndarray, np.ndarray]:
    """(passwords (N, K), attribute choices (N, A)) in {-0.5, +0.5}, fixed by KEY_SEED."""
    rng_p, rng_a = jax.random.split(jax.random.key(KEY_SEED))
    password = keys.random_passwords(rng_p, count, model_settings.password_bits)
    choices = keys.random_attributes(rng_a, count, len(model_settings.key_attributes))
    return np.asarray(password), np.asarray(choices)


def compute_latents(model, images: np.ndarray, password, choices, batch_size: int) -> dict:
    """Every space's latent (spaces.latents) of `images` under their keys, plus "z_anonymized"."""
    networks, params = model.networks, model.params

    @jax.jit
    def batch(x, p, a):
        condition = keys.condition_vector(keys.ANONYMIZE, p, a)
        out = spaces.latents(networks, params, x, condition)
        anonymized = spaces.decode_edited(
            networks, params, x, condition, "z", jax.numpy.zeros_like(out["z"])
        )
        out["z_anonymized"] = apply(networks["encoder"], params["encoder"], anonymized).vector
        return out

    names = (*spaces.SPACES, "z_anonymized")
    run = lambda x, p, a: tuple(batch(x, p, a)[n] for n in names)  # noqa: E731
    results = map_in_batches(run, [images, password, choices], batch_size)
    return dict(zip(names, results))


def split_latents(model, source, count: int, cache_dir: str | None, batch_size: int = 64) -> dict:
    """The cached latents of `count` photos spread evenly over `source` (computed if missing)."""
    count = min(count, len(source))
    path = None
    if cache_dir is not None:
        path = os.path.join(
            cache_dir, f"latents_{source_name(source)}_step{model.step}_n{count}.npz"
        )
        try:
            with np.load(path) as cached:
                if int(cached["key_seed"]) == KEY_SEED:
                    return {k: cached[k] for k in cached.files}
        except (OSError, ValueError, KeyError):  # missing or damaged: recompute
            pass
    index = np.linspace(0, len(source) - 1, count).round().astype(int)
    records = [source[int(i)] for i in index]
    images = from_uint8(np.stack([r["image"] for r in records]))
    password, choices = photo_keys(count, model.model_settings)
    result = compute_latents(model, images, password, choices, batch_size)
    result.update(
        choices=choices,
        labels=np.stack([np.asarray(r["attributes"], bool) for r in records]),
        identities=np.asarray([r["identity"] for r in records], np.int64),
        key_seed=np.asarray(KEY_SEED),
    )
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        with written_atomically(path, "wb") as f:
            np.savez(f, **result)
    return result


def source_name(source) -> str:
    """A split's name for file names (grain/TFDS sources know theirs; else "split")."""
    return str(getattr(source, "split", None) or "split").replace("/", "_")
