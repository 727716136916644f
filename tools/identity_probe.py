"""Identity probes on synth_faces: identity should be learnable, but only from the face.

The synthetic set stands in for CelebA identities, so a person's photos must share a face
that a small network can learn to recognise, yet differ enough (pose, lighting, background,
clothing, sensor noise, per-photo attributes) that recognition is not a lookup, and nothing
but the face may give the person away. The task is closed-set identification of known
people in new photos: every probe trains on the first `train_photos` photos of each of
`people` identities and is scored on that person's next `test_photos` photos (chance is
1 / people).

* linear_pixels: logistic regression on raw pixels, i.e. how far template matching gets.
* tiny_cnn: a small CNN; identity should be clearly learnable and not trivially so.
* nuisance_only: logistic regression on the true nuisance values (pose, lighting,
  background, clothing). They are drawn independently of identity, so this must sit at
  chance; above chance would be a leak that lets a model know people by their photo setup.
* background_pixels: logistic regression on the four image corners (8x8 at 64px), mostly
  background: the same leak check on what a model actually sees.

Run from the repository root: python -m tools.identity_probe --out probe.json
"""

import argparse
import json
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sdn_jax.data import synth
from sdn_jax.images import from_uint8

NUISANCE_KEYS = ("pose", "lighting", "background", "clothing")
CORNER_FRACTION = 8  # background_pixels sees corners of side image_size / 8 (8x8 at 64px).


def make_split(people: int, train_photos: int, test_photos: int, image_size: int, seed: int):
    """Renders every person's photos; photos [0, train_photos) train, the rest test.

    Splitting by photo index rather than at random keeps the split a pure function of the
    arguments and asks exactly the question of interest: known people, unseen photos.
    """
    per_person = train_photos + test_photos
    ids = np.repeat(np.arange(people), per_person)
    photos = np.tile(np.arange(per_person), people)
    images, _, nuisance = synth.render_faces(ids, photos, image_size, seed, return_nuisance=True)
    nuisance = np.concatenate([nuisance[k] for k in NUISANCE_KEYS], 1).astype(np.float32)
    is_train = photos < train_photos

    def take(mask):
        return {"images": images[mask], "nuisance": nuisance[mask], "labels": ids[mask]}

    return take(is_train), take(~is_train)


def corner_pixels(images: np.ndarray) -> np.ndarray:
    """(N, 4 * c * c * 3): the four c x c corners, flattened, c = image_size / 8.

    Scaling with the image keeps the same part of the frame at every resolution; a fixed
    8x8 at 32px would reach into hair and shoulders.
    """
    s = images.shape[1]
    size = s // CORNER_FRACTION
    corners = [images[:, r : r + size, c : c + size] for r in (0, s - size) for c in (0, s - size)]
    return np.concatenate([c.reshape(len(images), -1) for c in corners], 1)


def standardize(train: np.ndarray, test: np.ndarray):
    """Zero mean, unit variance per feature, with statistics of the training set only."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """{"top1": ..., "top5": ...}: share of rows whose label is among the k highest logits."""
    order = np.argsort(-np.asarray(logits), axis=1, kind="stable")
    return {f"top{k}": float(np.mean(np.any(order[:, :k] == labels[:, None], 1))) for k in ks}


def _log(name: str, step: int, steps: int, loss) -> None:
    print(f"[{name}] step {step:5d}/{steps} loss {float(loss):.4f}", flush=True)


def train_logreg(name, x_train, y_train, x_test, num_classes, steps, lr, weight_decay=1e-3):
    """Full-batch multinomial logistic regression (adamw from zeros); (train, test) logits.

    Full batch and zero init make the fit deterministic, and every probe here fits in memory.
    """
    opt = optax.adamw(lr, weight_decay=weight_decay)

    def loss_fn(params, x, y):
        logits = x @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    x, y = jnp.asarray(x_train, jnp.float32), jnp.asarray(y_train, jnp.int32)
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    opt_state = opt.init(params)
    for i in range(1, steps + 1):
        params, opt_state, loss = step(params, opt_state, x, y)
        if i == 1 or i % max(1, steps // 4) == 0:
            _log(name, i, steps, loss)
    return tuple(np.asarray(jnp.asarray(a) @ params["w"] + params["b"]) for a in (x, x_test))


class TinyCNN(nn.Module):
    """Stride-2 3x3 convs, GroupNorm (no batch statistics), global average pool, linear head.

    Narrow early layers keep it cheap on a CPU: at 64px the first layers dominate the cost.
    """

    num_classes: int
    features: Sequence[int] = (16, 32, 64, 128)

    @nn.compact
    def __call__(self, x):
        for f in self.features:
            x = nn.relu(nn.GroupNorm(num_groups=8)(nn.Conv(f, (3, 3), strides=2)(x)))
        return nn.Dense(self.num_classes)(x.mean((1, 2)))


def train_cnn(x_train, y_train, x_test, num_classes, steps, key, batch_size=64, lr=3e-3):
    """Trains TinyCNN (adamw, warmup + cosine decay); returns (train, test) logits.

    Batches are drawn inside the jitted step from the device-resident training set, so a
    step is one dispatch; a random horizontal flip is the only augmentation.
    """
    init_key, key = jax.random.split(key)
    x, y = jnp.asarray(x_train), jnp.asarray(y_train, jnp.int32)
    model = TinyCNN(num_classes)
    params = jax.jit(model.init)(init_key, x[:1])  # eager init compiles every op alone
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, steps // 20 + 1, steps), 1e-4)
    opt_state = jax.jit(opt.init)(params)

    @jax.jit
    def step(params, opt_state, key):
        idx_key, flip_key = jax.random.split(key)
        idx = jax.random.randint(idx_key, (batch_size,), 0, x.shape[0])
        flip = jax.random.bernoulli(flip_key, 0.5, (batch_size, 1, 1, 1))
        xb = jnp.where(flip, x[idx, :, ::-1], x[idx])

        def loss_fn(p):
            logits = model.apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(1, steps + 1):
        key, step_key = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, step_key)
        if i == 1 or i % max(1, steps // 10) == 0:
            _log("tiny_cnn", i, steps, loss)
    apply = jax.jit(model.apply)

    def predict(a):
        return np.concatenate(
            [apply(params, jnp.asarray(a[i : i + 256])) for i in range(0, len(a), 256)]
        )

    return predict(x_train), predict(x_test)


def run_probes(
    people=100, train_photos=16, test_photos=8, image_size=64, steps=1000, linear_steps=300, seed=0
) -> dict:
    """Renders the split, runs the four probes and returns the JSON-ready results.

    Each probe reports held-out top1/top5 and train top1: a leak probe at chance on test
    should still fit its training set, showing that it had the capacity to find a signal.
    """
    start = time.time()
    train, test = make_split(people, train_photos, test_photos, image_size, seed)
    y_train, y_test = train["labels"], test["labels"]
    print(f"Rendered {len(y_train)} train / {len(y_test)} test in {time.time() - start:.1f}s")
    pixels = [from_uint8(s["images"]) for s in (train, test)]
    corners = [from_uint8(corner_pixels(s["images"])) for s in (train, test)]
    # (features, learning rate): the 18 standardized nuisance values need a larger step to
    # converge in a few hundred full-batch steps than thousands of pixels do.
    linear = {
        "linear_pixels": (pixels, 1e-3),
        "nuisance_only": (standardize(train["nuisance"], test["nuisance"]), 1e-2),
        "background_pixels": (corners, 1e-3),
    }
    logits = {}
    for name, ((x_train, x_test), lr) in linear.items():
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
        logits[name] = train_logreg(name, x_train, y_train, x_test, people, linear_steps, lr)
    key = jax.random.key(seed)
    logits["tiny_cnn"] = train_cnn(pixels[0], y_train, pixels[1], people, steps, key)
    probes = {}
    for name in ("linear_pixels", "tiny_cnn", "nuisance_only", "background_pixels"):
        train_logits, test_logits = logits[name]
        probes[name] = topk_accuracy(test_logits, y_test)
        probes[name]["train_top1"] = topk_accuracy(train_logits, y_train, (1,))["top1"]
    return {
        "people": people,
        "train_photos": train_photos,
        "test_photos": test_photos,
        "image_size": image_size,
        "steps": steps,
        "linear_steps": linear_steps,
        "seed": seed,
        "chance": 1.0 / people,
        "probes": probes,
        "seconds": round(time.time() - start, 1),
    }


def format_table(result: dict) -> str:
    """The probes as a text table, held-out top1 also as a multiple of chance."""
    chance = result["chance"]
    lines = [f"{'probe':<18} {'top1':>6} {'top5':>6} {'x chance':>9} {'train top1':>11}"]
    for name, a in result["probes"].items():
        lines.append(
            f"{name:<18} {a['top1']:6.3f} {a['top5']:6.3f} {a['top1'] / chance:9.1f} "
            f"{a['train_top1']:11.3f}"
        )
    lines.append(f"chance top1 {chance:.3f}, top5 {min(1, 5 * chance):.3f}; {result['seconds']}s")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--train_photos", type=int, default=16)
    parser.add_argument("--test_photos", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=64, choices=synth.IMAGE_SIZES)
    parser.add_argument("--steps", type=int, default=1000, help="tiny_cnn training steps")
    parser.add_argument("--linear_steps", type=int, default=300, help="logistic regression steps")
    parser.add_argument("--seed", type=int, default=0, help="renderer and probe seed")
    parser.add_argument("--out", help="JSON file to write the results to")
    a = parser.parse_args(argv)
    result = run_probes(
        a.people, a.train_photos, a.test_photos, a.image_size, a.steps, a.linear_steps, a.seed
    )
    print(format_table(result))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"Wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
