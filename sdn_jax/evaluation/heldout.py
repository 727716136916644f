"""End-of-training figures on held-out people, with SDN's own classifier.

Recovery PSNR with the right key and with a wrong password, the classifier's attribute
agreement on anonymized faces, and how often C's identity embedding links each output
back to the person (nearest neighbour among one reference photo per person). C took part
in training, so these are the trainer's view; the independent attacker of
sdn_jax.evaluation.attacker gives the adversary's.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sdn_jax import compiler, keys
from sdn_jax.data import attributes as attr_lib
from sdn_jax.evaluation import metrics
from sdn_jax.evaluation.outputs import OUTPUTS, make_outputs_fn
from sdn_jax.models.sdn import apply
from sdn_jax.settings import Model

# Fixed evaluation keys: the same for every checkpoint, so runs and steps compare.
EVAL_KEY_SEED = 1234
MAX_PSNR = 100.0  # dB, for identical images (not inf, so that means stay numbers)


def evaluation_keys(batch: int, model: Model) -> dict:
    """Right keys, a wrong password (random, never the right one) and wrong attributes."""
    rng = jax.random.key(EVAL_KEY_SEED)
    rng_p, rng_a, rng_w, rng_wa = jax.random.split(rng, 4)
    password = keys.random_passwords(rng_p, batch, model.password_bits)
    target = keys.random_attributes(rng_a, batch, len(model.key_attributes))
    wrong_password = keys.wrong_passwords(rng_w, password)
    wrong_attributes = keys.flip_bits(rng_wa, target, 1)
    return dict(
        password=password,
        attributes=target,
        wrong_password=wrong_password,
        wrong_attributes=wrong_attributes,
    )


def _identification_rate(embeddings, identities, gallery_index, probe_index):
    """Top-1 nearest-neighbour identification of probes against the gallery (cosine)."""
    gallery = embeddings["original"][gallery_index]
    gallery_ids = identities[gallery_index]
    rates = {}
    for name, emb in embeddings.items():
        scores = emb[probe_index] @ gallery.T
        predicted = gallery_ids[np.argmax(scores, axis=1)]
        rates[name] = float(np.mean(predicted == identities[probe_index]))
    return rates


def evaluate_heldout(params, networks, batches, model: Model) -> dict:
    """Summary figures over `batches` (dicts with image, identity, mask) of a held-out split."""
    outputs_fn = compiler.jit(make_outputs_fn(networks))
    classify = compiler.jit(lambda p, x: apply(networks["classifier"], p, x))
    key_index = np.asarray(attr_lib.attribute_indices(model.key_attributes))
    collected = {name: [] for name in ("identity", "original", *OUTPUTS)}
    psnrs = {name: [] for name in OUTPUTS}
    attribute_hits, original_attribute_hits = [], []
    for batch in batches:
        mask = np.asarray(batch["mask"], bool)
        images = jnp.asarray(batch["image"])
        key = evaluation_keys(images.shape[0], model)
        outputs = jax.device_get(outputs_fn(params, images, key))
        for name in OUTPUTS:
            psnr = metrics.psnr_numpy(outputs[name], images, data_range=2.0, max_db=MAX_PSNR)
            psnrs[name].append(psnr[mask])
        for name, x in (("original", images), *((n, outputs[n]) for n in OUTPUTS)):
            c = classify(params["classifier"], jnp.asarray(x))
            collected[name].append(np.asarray(c.embedding)[mask])
            if name == "original":  # C's own accuracy on real photos: the reference.
                predicted = np.asarray(c.attribute_logits)[:, key_index] > 0
                truth = np.asarray(batch["attributes"])[:, key_index]
                original_attribute_hits.append((predicted == truth)[mask])
            if name == "anonymized":
                predicted = np.asarray(c.attribute_logits)[:, key_index] > 0
                requested = np.asarray(key["attributes"]) > 0
                attribute_hits.append((predicted == requested)[mask])
        collected["identity"].append(np.asarray(batch["identity"])[mask])
    identities = np.concatenate(collected.pop("identity"))
    embeddings = {k: np.concatenate(v) for k, v in collected.items()}
    # One reference photo per person (the first seen); every other photo is a probe.
    _, gallery_index = np.unique(identities, return_index=True)
    probe_index = np.setdiff1d(np.arange(len(identities)), gallery_index)
    rates = _identification_rate(embeddings, identities, gallery_index, probe_index)
    summary = {
        "num_images": int(len(identities)),
        "num_people": int(len(gallery_index)),
        "psnr/recovered": float(np.mean(np.concatenate(psnrs["recovered"]))),
        "psnr/anonymized": float(np.mean(np.concatenate(psnrs["anonymized"]))),
        "psnr/wrong_password": float(np.mean(np.concatenate(psnrs["recovered_wrong_password"]))),
        "psnr/wrong_attributes": float(
            np.mean(np.concatenate(psnrs["recovered_wrong_attributes"]))
        ),
        "classifier/attribute_accuracy_anonymized": float(np.mean(np.concatenate(attribute_hits))),
        "classifier/attribute_accuracy_original": float(
            np.mean(np.concatenate(original_attribute_hits))
        ),
    }
    per_attribute = np.mean(np.concatenate(attribute_hits), axis=0)
    for name, hit_rate in zip(model.key_attributes, per_attribute):
        summary[f"classifier/attribute_accuracy_anonymized/{name}"] = float(hit_rate)
    for name, rate in rates.items():
        summary[f"classifier/identification_{name}"] = rate
    return summary
