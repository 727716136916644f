"""The update steps: pure functions of (state, batch), jitted and sharded by the caller.

A full step updates E/G/Q on the generator loss (with the current D, C, q), then D and
C on that pass's fakes (reused, not recomputed), then the CLUB network q on the pass's
embeddings (objectives.py). The first `train.classifier_warmup_steps` update C alone.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from sdn_jax import objectives
from sdn_jax.settings import Settings
from sdn_jax.state import GENERATOR_NETWORKS, TrainState


def _update(optimizer, params, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def train_step(state: TrainState, batch: dict, *, networks, optimizers, settings, base_rng):
    """One step of every network; returns the new state and scalar metrics."""
    rng = jax.random.fold_in(base_rng, state.step)
    g_batch = objectives.generator_share(batch, settings)
    key = objectives.sample_keys(rng, g_batch["image"].shape[0], settings)
    params, opt_state = dict(state.params), dict(state.opt_state)

    def update(names, grads):
        for name in names:
            params[name], opt_state[name] = _update(
                optimizers[name], params[name], opt_state[name], grads[name]
            )

    gen_params = {k: params[k] for k in GENERATOR_NETWORKS}
    frozen = {k: v for k, v in params.items() if k not in GENERATOR_NETWORKS}
    (g_total, aux), g_grads = jax.value_and_grad(objectives.generator_loss, has_aux=True)(
        gen_params, frozen, networks, g_batch, key, state.step, settings, jax.random.fold_in(rng, 2)
    )
    update(GENERATOR_NETWORKS, g_grads)

    dc_params = {k: params[k] for k in ("discriminator", "classifier")}
    dc_loss = jax.value_and_grad(objectives.discriminator_classifier_loss, has_aux=True)
    (_, dc_metrics), dc_grads = dc_loss(
        dc_params, networks, batch, aux["fakes"], settings, jax.random.fold_in(rng, 1)
    )
    update(("discriminator", "classifier"), dc_grads)

    q_loss, q_grads = jax.value_and_grad(objectives.club_loss)(
        params["club"], networks, aux["f_x"], aux["f_a"]
    )
    update(("club",), {"club": q_grads})

    metrics = {f"loss/{k}": v for k, v in aux["terms"].items()}
    metrics.update({f"loss/{k}": v for k, v in dc_metrics.items()})
    metrics["loss/g_total"] = g_total
    metrics["loss/club_fit"] = q_loss
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        ema_params=update_ema(state.ema_params, params, state.step, settings),
    )
    return new_state, metrics


def update_ema(ema_params: dict, params: dict, step, settings: Settings) -> dict:
    """E's and G's moving averages after a full step (a no-op when none are kept).

    The decay ramps up as (1 + n) / (10 + n) over the first n full steps, so the average
    forgets the initialisation quickly, then holds at `train.ema_decay`.
    """
    if not ema_params:
        return ema_params
    t = settings.train
    full_steps = jnp.maximum(step - t.classifier_warmup_steps, 0).astype(jnp.float32)
    decay = jnp.minimum(t.ema_decay, (1.0 + full_steps) / (10.0 + full_steps))
    return {
        name: jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params[name])
        for name, ema in ema_params.items()
    }


def classifier_warmup_step(
    state: TrainState, batch: dict, *, networks, optimizers, settings, base_rng=None
):
    """A step of C alone on real images: the first `train.classifier_warmup_steps`.

    The generator's identity and attribute terms follow C's gradients; from a random C
    they point nowhere. C's real-image loss does not depend on G, and a C step costs
    ~1/20 of a full step, so C learns first and G starts against a real recogniser.
    """
    params, opt_state = dict(state.params), dict(state.opt_state)
    rng = None if base_rng is None else jax.random.fold_in(base_rng, state.step)
    (c_total, (metrics, _)), grads = jax.value_and_grad(objectives.classifier_loss, has_aux=True)(
        params["classifier"], networks, batch, settings, rng
    )
    params["classifier"], opt_state["classifier"] = _update(
        optimizers["classifier"], params["classifier"], opt_state["classifier"], grads
    )
    metrics = {f"loss/{k}": v for k, v in metrics.items()}
    metrics["loss/c_total"] = c_total
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def make_train_step(networks, optimizers, settings: Settings, base_rng):
    """train_step with everything but (state, batch) bound, ready for jax.jit."""
    return functools.partial(
        train_step, networks=networks, optimizers=optimizers, settings=settings, base_rng=base_rng
    )


def make_classifier_warmup_step(networks, optimizers, settings: Settings, base_rng=None):
    return functools.partial(
        classifier_warmup_step,
        networks=networks,
        optimizers=optimizers,
        settings=settings,
        base_rng=base_rng,
    )
