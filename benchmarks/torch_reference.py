"""sdn-jax's training step in PyTorch: the reference that
`python -m sdn_jax.benchmark train_step --vs-torch` times JAX against.

The networks of torch_networks.py, the terms of torch_losses.py and the step of
sdn_jax/steps.py: E, G and Q on the generator loss (D, C and q frozen), then D and C on
that pass's detached fakes, then the CLUB network q, with every term of
sdn_jax/objectives.py on (a full step after the ramp) and per-network Adam (b1, b2,
warm-up + cosine, the lr scales of state.py). Keys and recolouring draw from torch's
RNG: other numbers than JAX's, the same work.

`time_train_step` times it eager and under torch.compile (default mode) on the CPU with
as many threads as JAX uses. Needs torch (requirements-bench.txt) and the repository
root on the path; not part of the installed package.
"""

import os
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks import torch_losses as losses
from benchmarks.torch_networks import build_networks
from sdn_jax import state as state_lib
from sdn_jax.data import attributes as attr_lib
from sdn_jax.settings import Settings
from sdn_jax.state import GENERATOR_NETWORKS, LR_SCALE_FIELD

# One optimiser per update of the step; per-network lr scales are its param groups
# (Adam is elementwise: grouping changes no number, and one fused call is cheaper).
_UPDATES = {
    "generator": GENERATOR_NETWORKS,
    "critics": ("discriminator", "classifier"),
    "club": ("club",),
}
# The faster memory format of each mode on the default config, 2 cores (docs/benchmarks.md):
# channels_last made eager steps 4-28% faster; under torch.compile it gained nothing.
CHANNELS_LAST = {"eager": True, "compile": False}


# --------------------------------------------------------------------------- objectives


def _frozen(network: torch.nn.Module) -> Callable:
    """The network with its parameters detached: the generator's backward pass computes
    no gradient for D, C or q (jax.grad of generator_loss differentiates E, G, Q only)."""
    params = {name: p.detach() for name, p in network.named_parameters()}
    return lambda *args: torch.func.functional_call(network, params, args)


def dual_pass(nets, images, key: dict, recovery_grad_scale: float):
    """sdn.dual_pass: x_A, x_A2, x_R, x_W with shared E calls and doubled G batches."""
    n = images.shape[0]
    anon = losses.condition_vector(losses.ANONYMIZE, key["password"], key["attributes"])
    anon2 = losses.condition_vector(losses.ANONYMIZE, key["password2"], key["attributes"])
    recover = losses.condition_vector(losses.RECOVER, key["password"], key["attributes"])
    wrong = losses.condition_vector(losses.RECOVER, key["wrong_password"], key["wrong_attributes"])

    def decode_twice(latent, condition_a, condition_b, inputs):
        doubled = type(latent)(
            torch.cat([latent.features] * 2),
            tuple(torch.cat([s, s]) for s in latent.skips),
            torch.cat([latent.vector] * 2),
        )
        both = torch.cat([condition_a, condition_b])
        out = nets["decoder"](doubled, both, torch.cat([inputs, inputs]))
        return out[:n], out[n:]

    anonymized, anonymized2 = decode_twice(nets["encoder"](images), anon, anon2, images)
    # sdn.scale_gradient: x_A forward, recovery_grad_scale of its gradient backward.
    s = recovery_grad_scale
    anonymized_in = anonymized if s == 1 else s * anonymized + (1 - s) * anonymized.detach()
    latent = nets["encoder"](anonymized_in)
    recovered, wrong_recovered = decode_twice(latent, recover, wrong, anonymized_in)
    return anonymized, anonymized2, recovered, wrong_recovered


def generator_terms(nets, x, key: dict, settings: Settings, recolour_critic: bool = True):
    """objectives.generator_terms: (terms, (x_A, x_A2, x_R, x_W), f(x), f(x_A) detached)."""
    w = settings.loss
    out = dual_pass(nets, x, key, w.recovery_grad_scale)
    x_a, x_a2, x_r, x_w = out
    discriminator, classifier, club = (
        _frozen(nets[k]) for k in ("discriminator", "classifier", "club")
    )
    scores = discriminator(torch.cat([x_a, x_r, x_w]))
    generated = torch.cat(out)
    if recolour_critic and w.critic_recolour > 0:
        generated = losses.recolour(generated, w.critic_recolour)
    c = classifier(torch.cat([x, generated]))
    f_real, f_a, f_a2, f_r, f_w = c.embedding.chunk(5)
    key_index = attr_lib.attribute_indices(settings.model.key_attributes)
    attributes_a = c.attribute_logits.chunk(5)[1][:, key_index]
    f_x = f_real.detach()
    mean, log_var = club(f_x)
    q_logits = nets["key_predictor"](x, x_a)
    terms = {
        "adversarial": losses.lsgan_generator(scores),
        "recovery": (x_r - x).abs().mean(),
        "keep_anonymized": losses.closeness_margin(x_a, x, w.keep_margin)
        + losses.closeness_margin(x_a2, x, w.keep_margin),
        "change_anonymized": losses.distance_margin(x_a, x, w.change_margin)
        + losses.distance_margin(x_a2, x_a, w.change_margin),
        "wrong_distance": losses.distance_margin(x_w, x, w.wrong_margin),
        "attributes": losses.attribute_bce(attributes_a, key["attributes"] + 0.5),
        "identity_embedding": losses.dissimilarity(f_a, f_x) + losses.dissimilarity(f_w, f_x),
        "club": losses.club_upper_bound(mean, log_var, f_a),
        "diversity": losses.dissimilarity(f_a, f_a2),
        "wrong_diversity": losses.dissimilarity(f_w, f_a.detach()),
        "key_information": losses.key_information(q_logits, key["password"]),
        "recovered_embedding": losses.mismatch(f_r, f_x),
    }
    return terms, out, f_x, f_a.detach()


def generator_loss(nets, x, settings: Settings):
    """Fresh keys, then every term at its weight (the ramp is over in a full step);
    returns (total, the detached fakes [x_A, x_R, x_W], f(x), f(x_A))."""
    key = losses.sample_keys(x.shape[0], settings)
    terms, (x_a, _, x_r, x_w), f_x, f_a = generator_terms(nets, x, key, settings)
    total = sum(getattr(settings.loss, name) * value for name, value in terms.items())
    return total, torch.cat([x_a, x_r, x_w]).detach(), f_x, f_a


def classifier_loss(classifier, batch: dict, settings: Settings, recolour_copy: bool = True):
    """objectives.classifier_loss: (total, the real images' embeddings)."""
    w = settings.loss
    x, labels = batch["image"], batch["identity"]
    c = classifier(x)
    embeddings = c.embedding
    if recolour_copy and w.classifier_recolour > 0:
        copy = classifier(losses.recolour(x, w.classifier_recolour)).embedding
        embeddings, labels = torch.cat([embeddings, copy]), torch.cat([labels, labels])
    key_index = attr_lib.attribute_indices(settings.model.key_attributes)
    attributes = batch["attributes"]
    total = (
        w.classifier_contrastive
        * losses.supervised_contrastive(embeddings, labels, w.contrastive_temperature)
        + losses.attribute_bce(c.attribute_logits, attributes)
        + w.classifier_key_attributes
        * losses.attribute_bce(c.attribute_logits[:, key_index], attributes[:, key_index])
    )
    return total, c.embedding


def critics_loss(nets, batch: dict, fakes, settings: Settings, recolour_copy: bool = True):
    """objectives.discriminator_classifier_loss: D on G's share and the fakes; C on the
    whole batch and linking x_A and x_W back to f(x)."""
    every = generator_every(settings)
    d_loss = losses.lsgan_discriminator(
        nets["discriminator"](batch["image"][::every]), nets["discriminator"](fakes)
    )
    c_real, f_x = classifier_loss(nets["classifier"], batch, settings, recolour_copy)
    anonymized, _, wrong = fakes.chunk(3)
    f_a, f_w = nets["classifier"](torch.cat([anonymized, wrong])).embedding.chunk(2)
    f_x = f_x[::every].detach()
    c_adversarial = losses.mismatch(f_a, f_x) + losses.mismatch(f_w, f_x)
    return d_loss + c_real + settings.loss.classifier_adversarial * c_adversarial


def torch_batch(batch: dict, channels_last: bool = False) -> dict:
    """A numpy batch (NHWC images, as random_batch makes) as torch tensors."""
    images = torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2)))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return {
        "image": images,
        "identity": torch.from_numpy(np.asarray(batch["identity"], np.int64)),
        "attributes": torch.from_numpy(np.asarray(batch["attributes"], np.float32)),
    }


def club_loss(club, f_x, f_a):
    mean, log_var = club(f_x)
    return -losses.gaussian_log_likelihood(mean, log_var, f_a).mean()


def generator_every(settings: Settings) -> int:
    """G and D train on every m-th image (objectives.generator_share)."""
    return settings.train.global_batch_size // settings.train.generator_images


# ----------------------------------------------------------------------------- training


def learning_rates(settings: Settings) -> np.ndarray:
    """state.learning_rate_schedule (optax's) at steps 0..train.num_steps, computed once:
    the same numbers as JAX's, and no JAX call inside a timed torch step."""
    schedule = state_lib.learning_rate_schedule(settings)
    return np.asarray(schedule(np.arange(settings.train.num_steps + 1)), np.float64)


def build_optimizers(nets, settings: Settings) -> dict:
    """Adam(b1, b2, eps 1e-8 as optax's) per update; fused: one kernel for all tensors."""
    o = settings.optim
    optimizers = {}
    for update, names in _UPDATES.items():
        groups = [
            {
                "params": [p for p in nets[name].parameters() if p.requires_grad],
                "scale": getattr(o, LR_SCALE_FIELD[name]),
            }
            for name in names
        ]
        optimizers[update] = torch.optim.Adam(
            groups, lr=o.learning_rate, betas=(o.b1, o.b2), eps=1e-8, fused=True
        )
    return optimizers


class Trainer:
    """The networks, their optimisers and steps.train_step's three updates, eager or with
    the three losses (forward and backward) under torch.compile; the fused Adam updates
    stay eager (one C++ kernel each)."""

    def __init__(self, settings: Settings, compile: bool = False, channels_last: bool = False):
        self.settings, self.channels_last = settings, channels_last
        self.nets = build_networks(settings.model, settings.data.image_size)
        if channels_last:
            self.nets = self.nets.to(memory_format=torch.channels_last)
        self.optimizers = build_optimizers(self.nets, settings)
        self.step_count = 0
        self._rates = learning_rates(settings)
        nets = self.nets
        losses = (
            lambda x: generator_loss(nets, x, settings),
            lambda batch, fakes: critics_loss(nets, batch, fakes, settings),
            lambda f_x, f_a: club_loss(nets["club"], f_x, f_a),
        )
        if compile:
            losses = tuple(torch.compile(loss) for loss in losses)
        self._generator, self._critics, self._club = losses

    def batch(self, batch: dict) -> dict:
        return torch_batch(batch, self.channels_last)

    def step(self, batch: dict) -> dict:
        """One full step on a `self.batch(...)` batch; returns the three losses."""
        rate = float(self._rates[min(self.step_count, len(self._rates) - 1)])
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = group["scale"] * rate
        every = generator_every(self.settings)
        g_total, fakes, f_x, f_a = self._generator(batch["image"][::every])
        self._update("generator", g_total)
        dc_total = self._critics(batch, fakes)
        self._update("critics", dc_total)
        q_total = self._club(f_x, f_a)
        self._update("club", q_total)
        self.step_count += 1
        return {"generator": g_total, "critics": dc_total, "club": q_total}

    def _update(self, name: str, loss: torch.Tensor) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def cpu_threads() -> int:
    """The cores this process may use: what XLA's CPU thread pool uses."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def time_train_step(
    settings: Settings,
    batch: dict,
    timed: Callable[[Callable[[], object]], tuple[int, float]],
    log: Callable[[str], None] = print,
    channels_last: dict | None = None,
    threads: int | None = None,
) -> dict:
    """Steps per second eager and under torch.compile, each timed by `timed` (the JAX
    benchmark's warm-up and timing) after one first step (the compile, when compiled).

    A compile that fails (no C++ compiler, an unsupported op) gives steps_per_s None and
    the error in one line, not a crash: the eager figure still stands. `threads`: as
    many as JAX's CPU thread pool by default; `channels_last`: per mode, CHANNELS_LAST's.
    """
    threads = threads or cpu_threads()
    layouts = channels_last or CHANNELS_LAST
    torch.set_num_threads(threads)
    log(f"train_step: torch {torch.__version__}, {threads} threads")
    results = {"version": torch.__version__, "threads": threads}
    results["eager"] = _time_mode(settings, batch, timed, log, False, layouts["eager"])
    try:
        results["compile"] = _time_mode(settings, batch, timed, log, True, layouts["compile"])
    except Exception as error:  # dynamo's and inductor's errors have many types
        first_line = (str(error).strip().splitlines() or [""])[0]
        message = f"{type(error).__name__}: {first_line}"
        log(f"train_step: torch.compile failed, no compiled figure: {message}")
        results["compile"] = {"steps_per_s": None, "error": message}
    return results


def _time_mode(settings, batch, timed, log, compile: bool, channels_last: bool) -> dict:
    torch.manual_seed(settings.seed)
    trainer = Trainer(settings, compile=compile, channels_last=channels_last)
    data = trainer.batch(batch)
    mode = f"{'compile' if compile else 'eager'}, {'channels_last' if channels_last else 'NCHW'}"
    log(f"train_step: torch {mode}: first step" + (" (compiling)" if compile else ""))
    start = time.perf_counter()
    trainer.step(data)
    first = time.perf_counter() - start
    log(f"train_step: torch {mode}: timing")
    count, seconds = timed(lambda: trainer.step(data))
    return {
        "steps_per_s": count / seconds,
        "channels_last": channels_last,
        "first_step_seconds": first,
        "num_steps": count,
        "seconds": seconds,
    }
