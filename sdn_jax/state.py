"""The training state: parameters and optimiser states of every network, and the step.

One explicit pytree, params keyed by network name. `abstract_state` gives its shapes
(no compute); `create_state` builds it already sharded (jit with out_shardings), and
the same abstract tree is the restore target for checkpoints.
"""

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sdn_jax.models import sdn
from sdn_jax.settings import Settings

GENERATOR_NETWORKS = ("encoder", "decoder", "key_predictor")  # updated by the generator loss
# What anonymize and recover run: with `train.ema_decay` > 0 their moving averages are kept
# beside the live params, and inference, samples and evaluation use the averages.
INFERENCE_NETWORKS = ("encoder", "decoder")
NETWORKS = sdn.NETWORKS
# Each network's learning-rate multiplier: a field of settings.optim.
LR_SCALE_FIELD = {
    "encoder": "generator_lr_scale",
    "decoder": "generator_lr_scale",
    "key_predictor": "generator_lr_scale",
    "discriminator": "discriminator_lr_scale",
    "classifier": "classifier_lr_scale",
    "club": "club_lr_scale",
}


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: dict  # network name -> params
    opt_state: dict  # network name -> optax state
    # INFERENCE_NETWORKS' params averaged over the steps (train.ema_decay); {} when off.
    ema_params: dict = flax.struct.field(default_factory=dict)


def learning_rate_schedule(settings: Settings) -> Callable:
    """Linear warm-up, then cosine decay to `decay_to` of the peak at num_steps."""
    o = settings.optim
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.learning_rate,
        warmup_steps=max(1, o.warmup_steps),
        decay_steps=max(o.warmup_steps + 1, settings.train.num_steps),
        end_value=o.learning_rate * o.decay_to,
    )


def build_optimizers(settings: Settings) -> dict:
    schedule = learning_rate_schedule(settings)
    o = settings.optim
    optimizers = {}
    for name in NETWORKS:
        scale = getattr(o, LR_SCALE_FIELD[name])
        optimizers[name] = optax.adam(lambda step, s=scale: s * schedule(step), o.b1, o.b2)
    return optimizers


def create_state(rng, networks: dict, optimizers: dict, settings: Settings) -> TrainState:
    params = sdn.init_params(rng, networks, settings.model, settings.data.image_size)
    opt_state = {name: optimizers[name].init(params[name]) for name in NETWORKS}
    keep_ema = settings.train.ema_decay > 0
    ema = {name: params[name] for name in INFERENCE_NETWORKS} if keep_ema else {}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, ema_params=ema
    )


def inference_params(state: TrainState) -> dict:
    """Every network's params, E and G replaced by their moving averages where kept."""
    return {**state.params, **state.ema_params}


def parameter_counts(params: dict) -> dict[str, int]:
    return {name: sum(x.size for x in jax.tree.leaves(p)) for name, p in params.items()}
