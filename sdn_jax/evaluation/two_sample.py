"""Classifier two-sample tests: can a classifier tell real photos from SDN's outputs?

A judge that needs no pretrained network: train a classifier on half of the people to
label real photos 0 and outputs 1, and report its accuracy on the other half's photos,
with as many of each class (0.5: the outputs are indistinguishable from real photos to
this classifier). People, not photos, are split, so the judge cannot score by
remembering a person it trained on. Two judges see different things: a small CNN (local
texture, blotches, blur) and a logistic regression on raw pixels (global colour and
layout). Everything derives from one seed; training is one jitted loop per judge.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdn_jax import compiler
from sdn_jax.images import from_uint8

CNN_LEARNING_RATE = 1e-3
LOGISTIC_LEARNING_RATE = 1e-2


def split_people(owners, seed: int) -> np.ndarray:
    """A fixed random half of the people (sorted ids) that the judges train on."""
    people = np.unique(np.asarray(owners))
    if len(people) < 2:
        raise ValueError(f"A two-sample test needs at least 2 people, got {len(people)}")
    shuffled = np.random.default_rng(seed).permutation(people)
    return np.sort(shuffled[: len(people) // 2])


def _balanced(index_real, index_fake, rng) -> tuple[np.ndarray, np.ndarray]:
    """As many of each class: the larger is subsampled (order kept)."""
    count = min(len(index_real), len(index_fake))
    if count == 0:
        raise ValueError("A half of the people has no real photo or no output")
    keep = lambda index: np.sort(rng.choice(index, count, replace=False))
    return keep(index_real), keep(index_fake)


def halves(real, fake, real_owner, fake_owner, seed: int) -> dict:
    """Train and test sets, people disjoint and classes balanced: `x` float [-1, 1],
    `y` 0 for real, 1 for an output, `people` the ids in each half."""
    real_owner, fake_owner = np.asarray(real_owner), np.asarray(fake_owner)
    train_people = split_people(np.concatenate([real_owner, fake_owner]), seed)
    rng = np.random.default_rng(seed + 1)
    sets = {}
    for name, inside in (("train", True), ("test", False)):
        in_real = np.flatnonzero(np.isin(real_owner, train_people) == inside)
        in_fake = np.flatnonzero(np.isin(fake_owner, train_people) == inside)
        in_real, in_fake = _balanced(in_real, in_fake, rng)
        sets[name] = dict(
            x=from_uint8(np.concatenate([real[in_real], fake[in_fake]])),
            y=np.repeat(np.array([0, 1], np.int32), len(in_real)),
            people=np.union1d(real_owner[in_real], fake_owner[in_fake]),
        )
    return sets


class SmallCNN(nn.Module):
    """Three stride-2 convolutions, mean-pooled, one logit: enough to see texture."""

    widths: tuple[int, ...] = (32, 64, 128)

    @nn.compact
    def __call__(self, x):
        for width in self.widths:
            x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
        return nn.Dense(1)(x.mean(axis=(1, 2)))[:, 0]


def _bce(logits, labels):
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean()


def _accuracy(logits, labels) -> float:
    return float(np.mean((np.asarray(logits) > 0) == (np.asarray(labels) == 1)))


CNN = SmallCNN()
CNN_OPTIMIZER = optax.adam(CNN_LEARNING_RATE)
_cnn_logits = compiler.jit(CNN.apply)


@compiler.jit(static_argnames="batch_size")
def cnn_step(params, opt_state, rng, step, x, y, *, batch_size: int):
    """One Adam step on a random batch of (x, y), randomly flipped left-right; the
    batch derives from (rng, step)."""
    key_batch, key_flip = jax.random.split(jax.random.fold_in(rng, step))
    index = jax.random.randint(key_batch, (batch_size,), 0, len(x))
    images = x[index]
    flip = jax.random.bernoulli(key_flip, 0.5, (batch_size, 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1], images)
    grads = jax.grad(lambda p: _bce(CNN.apply(p, images), y[index]))(params)
    updates, opt_state = CNN_OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def train_cnn(x, y, *, steps: int, batch_size: int, seed: int):
    """The CNN's params after `steps` Adam steps from an init drawn from `seed`."""
    rng_init, rng = jax.random.split(jax.random.key(seed))
    params = CNN.init(rng_init, x[:1])
    opt_state = CNN_OPTIMIZER.init(params)
    # A host loop of jitted steps, not lax.fori_loop: XLA's CPU backend ran these
    # convolutions ~40x slower inside a while loop (measured). Nothing syncs per step.
    for step in range(steps):
        params, opt_state = cnn_step(params, opt_state, rng, step, x, y, batch_size=batch_size)
    return params


def cnn_accuracy(sets: dict, *, steps: int, batch_size: int, seed: int) -> float:
    """Held-out accuracy of the small CNN."""
    params = train_cnn(
        jnp.asarray(sets["train"]["x"]), jnp.asarray(sets["train"]["y"]),
        steps=steps, batch_size=batch_size, seed=seed,
    )  # fmt: skip
    logits = _cnn_logits(params, jnp.asarray(sets["test"]["x"]))
    return _accuracy(logits, sets["test"]["y"])


@functools.partial(jax.jit, static_argnames="steps")
def train_logistic(features, labels, l2, *, steps: int):
    """(w, b) of an L2-regularised logistic regression: `steps` full-batch Adam steps
    from zero."""

    def loss_fn(params):
        w, b = params
        return _bce(features @ w + b, labels) + 0.5 * l2 * jnp.sum(w * w)

    optimizer = optax.adam(LOGISTIC_LEARNING_RATE)

    def step(_, carry):
        params, opt_state = carry
        updates, opt_state = optimizer.update(jax.grad(loss_fn)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = (jnp.zeros(features.shape[1], jnp.float32), jnp.zeros((), jnp.float32))
    params, _ = jax.lax.fori_loop(0, steps, step, (params, optimizer.init(params)))
    return params


def logistic_accuracy(sets: dict, *, steps: int, l2: float) -> float:
    """Held-out accuracy of logistic regression on raw pixels, each pixel standardised
    with the training half's mean and standard deviation."""
    train_x = sets["train"]["x"].reshape(len(sets["train"]["x"]), -1)
    test_x = sets["test"]["x"].reshape(len(sets["test"]["x"]), -1)
    mean, std = train_x.mean(0), np.maximum(train_x.std(0), 1e-6)
    standard = lambda x: jnp.asarray((x - mean) / std, jnp.float32)
    w, b = train_logistic(standard(train_x), jnp.asarray(sets["train"]["y"]), l2, steps=steps)
    return _accuracy(standard(test_x) @ w + b, sets["test"]["y"])


def two_sample_tests(real, fake, real_owner, fake_owner, settings) -> dict:
    """{"cnn", "pixel_logistic"}: each judge's held-out accuracy on uint8 (N, H, W, 3)
    real photos and outputs with their people's ids; `settings`: eval.realism."""
    sets = halves(real, fake, real_owner, fake_owner, settings.seed)
    cnn = cnn_accuracy(sets, steps=settings.cnn_steps, batch_size=settings.cnn_batch_size,
                       seed=settings.seed)  # fmt: skip
    logistic = logistic_accuracy(sets, steps=settings.logistic_steps, l2=settings.logistic_l2)
    return {"cnn": cnn, "pixel_logistic": logistic}
