"""The training state: parameters and optimiser states of every network, and the step.

One explicit pytree, params keyed by network name. `abstract_state` gives its shapes
(no compute); `create_state` builds it already sharded (jit with out_shardings), and
the same abstract tree is the restore target for checkpoints.
"""

from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sdn_jax.models.auxiliary import ClubNetwork, KeyPredictor
from sdn_jax.models.classifier import Classifier
from sdn_jax.models.decoder import Decoder
from sdn_jax.models.discriminator import Discriminator
from sdn_jax.models.encoder import Encoder

GENERATOR_NETWORKS = ("encoder", "decoder", "key_predictor")  # updated by the generator loss
# What anonymize and recover run: with `train.ema_decay` > 0 their moving averages are kept
# beside the live params, and inference, samples and evaluation use the averages.
INFERENCE_NETWORKS = ("encoder", "decoder")
NETWORKS = GENERATOR_NETWORKS + ("discriminator", "classifier", "club")
_LR_SCALE = {
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


def condition_size(config: ml_collections.ConfigDict) -> int:
    """Direction flag + password bits + key attributes."""
    return 1 + config.model.password_bits + len(config.model.key_attributes)


def build_networks(config: ml_collections.ConfigDict, num_identities: int) -> dict:
    m = config.model
    if len(m.use_skips) != len(m.widths) - 1:
        raise ValueError(
            f"model.use_skips needs one flag per level above the deepest "
            f"({len(m.widths) - 1} for widths {tuple(m.widths)}), got {tuple(m.use_skips)}"
        )
    embedding_head = m.get("classifier_embedding_head", "pooled")  # older runs: pooled
    if embedding_head not in ("pooled", "flatten"):
        raise ValueError(
            f"model.classifier_embedding_head must be 'pooled' or 'flatten', got {embedding_head!r}"
        )
    return {
        "encoder": Encoder(tuple(m.widths), m.encoder_res_blocks, m.latent_dim),
        "decoder": Decoder(
            tuple(m.widths),
            m.decoder_res_blocks,
            m.condition_hidden,
            tuple(m.use_skips),
            m.residual_output,
            recovery=m.get("recovery", "conditioned"),
            key_features=m.get("key_features", 0),
            key_frequency=m.get("key_frequency", 3.0),
            num_attributes=len(m.key_attributes),
            warp_pixels=m.get("warp_pixels", 0.0),
            linear_range=m.get("linear_range", 0.0),
        ),
        "key_predictor": KeyPredictor(m.password_bits, tuple(m.key_predictor_widths)),
        "discriminator": Discriminator(tuple(m.discriminator_widths), m.discriminator_scales),
        "classifier": Classifier(
            num_identities,
            widths=tuple(m.classifier_widths),
            embedding_dim=m.embedding_dim,
            flatten_embedding=embedding_head == "flatten",
        ),
        "club": ClubNetwork(m.club_hidden),
    }


def learning_rate_schedule(config: ml_collections.ConfigDict) -> Callable:
    """Linear warm-up, then cosine decay to `decay_to` of the peak at num_steps."""
    o = config.optim
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=o.learning_rate,
        warmup_steps=max(1, o.warmup_steps),
        decay_steps=max(o.warmup_steps + 1, config.train.num_steps),
        end_value=o.learning_rate * o.decay_to,
    )


def build_optimizers(config: ml_collections.ConfigDict) -> dict:
    schedule = learning_rate_schedule(config)
    o = config.optim
    optimizers = {}
    for name in NETWORKS:
        scale = o[_LR_SCALE[name]]
        optimizers[name] = optax.adam(lambda step, s=scale: s * schedule(step), o.b1, o.b2)
    return optimizers


def init_params(rng: jax.Array, networks: dict, config: ml_collections.ConfigDict) -> dict:
    size = config.data.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    condition = jnp.zeros((1, condition_size(config)), jnp.float32)
    keys = dict(zip(NETWORKS, jax.random.split(rng, len(NETWORKS))))
    params = {"encoder": networks["encoder"].init(keys["encoder"], images)["params"]}
    latent = networks["encoder"].apply({"params": params["encoder"]}, images)
    params["decoder"] = networks["decoder"].init(keys["decoder"], latent, condition, images)[
        "params"
    ]
    params["key_predictor"] = networks["key_predictor"].init(keys["key_predictor"], images, images)[
        "params"
    ]
    params["discriminator"] = networks["discriminator"].init(keys["discriminator"], images)[
        "params"
    ]
    params["classifier"] = networks["classifier"].init(keys["classifier"], images)["params"]
    embedding = jnp.zeros((1, config.model.embedding_dim), jnp.float32)
    params["club"] = networks["club"].init(keys["club"], embedding, config.model.embedding_dim)[
        "params"
    ]
    return params


def ema_decay(config: ml_collections.ConfigDict) -> float:
    """The moving average's per-step decay (0: no average kept)."""
    decay = config.train.get("ema_decay", 0.0)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {decay}")
    return decay


def create_state(rng, networks: dict, optimizers: dict, config) -> TrainState:
    params = init_params(rng, networks, config)
    opt_state = {name: optimizers[name].init(params[name]) for name in NETWORKS}
    ema = {name: params[name] for name in INFERENCE_NETWORKS} if ema_decay(config) else {}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, ema_params=ema
    )


def inference_params(state: TrainState) -> dict:
    """Every network's params, E and G replaced by their moving averages where kept."""
    return {**state.params, **state.ema_params}


def parameter_counts(params: dict) -> dict[str, int]:
    return {name: sum(x.size for x in jax.tree.leaves(p)) for name, p in params.items()}


def apply(network: nn.Module, params, *args, **kwargs):
    return network.apply({"params": params}, *args, **kwargs)
